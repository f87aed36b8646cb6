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
    limits: InputLimits = field(default_factory=InputLimits)

    def input_limits(self) -> InputLimits:
        """The request limits: no local paths, ever; URLs only when allowed."""
        return replace(self.limits, allow_local_paths=False, allow_url_fetch=self.allow_url_fetch,
                       allow_private_urls=self.allow_private_urls)
