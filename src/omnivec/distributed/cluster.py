"""Connecting to Ray, and the loopback rule our tests and benchmarks keep.

``address``: ``"local"`` starts a Ray instance inside this process (one machine), ``"auto"``
joins the cluster this machine belongs to, ``"ray://host:10001"`` connects a client to a remote
head. An existing connection (``ray.init`` called by the user) is used as it is.
"""
from __future__ import annotations

import logging
import socket
import warnings
from typing import Any


def connect(address: str | None = "auto", *, quiet: bool = True) -> Any:
    """``ray.init`` for ``address`` unless Ray is already initialised (then it is used as it is);
    Ray Data's own progress output is turned off either way. Returns the ray module."""
    try:
        import ray
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'omnivec[ray]'") from None
    if not ray.is_initialized():
        # Ray starts its processes with fork + exec: lancedb's warning about state shared with a
        # forked child does not apply (the child runs no Python of ours).
        warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
        address = address or "auto"
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if quiet:
            kwargs["logging_level"] = logging.WARNING
        if address == "local":
            ray.init(address="local", include_dashboard=False, **kwargs)   # a new instance, never a stale one
        else:
            ray.init(address=address, **kwargs)
    import ray.data
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False        # the driver draws its own bar (rows/s, ETA)
    ctx.print_on_execution_start = False
    return ray


def node_addresses() -> list[str]:
    """The address every live Ray node advertises (all ``127.0.0.1`` on a loopback-only host)."""
    import ray
    return [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]


def only_loopback() -> bool:
    """True when this process sees no network interface but ``lo`` (a namespace made with ``unshare -n``)."""
    return [name for _index, name in socket.if_nameindex()] == ["lo"]
