"""``ServerSettings``: everything configurable from ``omnivec serve``."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..inputs import InputLimits
from . import protocol


@dataclass
class ServerSettings:
    """Everything configurable from ``omnivec serve``."""

    model_aliases: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    allow_url_fetch: bool = False
    allow_private_urls: bool = False   # tests only; no CLI flag
    max_body_bytes: int = 64 * 2**20
    max_wait_ms: float = 5.0
    max_pending_items: int = 8192
    max_inputs: int = protocol.MAX_INPUTS
    max_json_depth: int = 32           # valid requests nest at most 4 levels (``{"input": [[ids]]}``)
    # Float values one response may carry (base64 counts 1/4, binary/ubinary 1/8), checked after
    # preparation and before the forward. JSON floats take ~20 bytes each (float32 printed as
    # float64: 2048 x 512 tokens x 128 dims gave 2.65 GB), so 12M values ~ 240 MB of JSON, ~1 GB
    # peak while rendering. Dense answers stay far below (2048 inputs x 2048 dims = 4.2M).
    max_response_values: int = 12_000_000
    # Work admitted at once, summed over every request in flight (a request alone is always
    # admitted, within its own limits): prepared tokens waiting for a forward, output values
    # held until answered (same units as max_response_values), decoded pixels being prepared.
    # (omnivec.server.admission). Defaults: ~2000 full-length texts of the default model;
    # 2 GiB of queued rows (jina-v4 image rows hold ~19 KB a token of pixels); two responses
    # at the max_response_values cap; one request at the max_request_pixels cap.
    max_pending_tokens: int = 1_000_000
    max_pending_bytes: int = 2 * 2**30
    max_pending_values: int = 24_000_000
    max_decoding_pixels: int = 256_000_000
    fetch_workers: int = 4             # threads for URL inputs, apart from the preparation pool
    # /metrics, /docs and /openapi.json need the API key too when keys are set, unless True.
    public_metrics: bool = False
    # HTTP limits (uvicorn/h11; omnivec.server.http): a client must send its request headers
    # within header_timeout_s of connecting (or of its previous response), its body within
    # body_timeout_s; headers larger than max_header_bytes are refused; connections over
    # max_connections get a 503.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 512
    keep_alive_s: float = 5.0
    # On SIGTERM/SIGINT: stop accepting, let requests in flight finish for up to drain_timeout_s,
    # then exit 0 (omnivec.server.http.serve).
    drain_timeout_s: float = 30.0
    # "text": uvicorn's access lines; "json": one JSON object a request on the omnivec.access
    # logger (request id, route, dialect, status, items, tokens, seconds) and no uvicorn lines.
    log_format: str = "text"
    limits: InputLimits = field(default_factory=InputLimits)

    def budgets(self) -> dict[str, int]:
        """The global admission budgets, by resource (see ``omnivec.server.admission``)."""
        return {"items": self.max_pending_items, "pixels": self.max_decoding_pixels,
                "tokens": self.max_pending_tokens, "bytes": self.max_pending_bytes,
                "values": self.max_pending_values}

    def input_limits(self) -> InputLimits:
        """The request limits: no local paths, ever; URLs only when allowed."""
        return replace(self.limits, allow_local_paths=False, allow_url_fetch=self.allow_url_fetch,
                       allow_private_urls=self.allow_private_urls)
