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
    limits: InputLimits = field(default_factory=InputLimits)

    def input_limits(self) -> InputLimits:
        """The request limits: no local paths, ever; URLs only when allowed."""
        return replace(self.limits, allow_local_paths=False, allow_url_fetch=self.allow_url_fetch,
                       allow_private_urls=self.allow_private_urls)
