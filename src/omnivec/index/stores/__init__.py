"""Open a vector store from one spec string, so the CLI and the Index take a single ``--store``.

* a directory path -> :class:`LanceStore` (embedded, the default);
* ``qdrant://host[:port]/collection`` (``qdrants://`` for https; API key from ``QDRANT_API_KEY``)
  -> :class:`QdrantStore` on a server;
* ``qdrant+local:///dir/collection`` or ``qdrant+memory:///collection`` -> the same
  :class:`QdrantStore` on qdrant-client's in-process local mode (pure Python, for small corpora/tests).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from ..store import MultivectorStorage, Store
from .lance import LanceStore
from .qdrant import QdrantStore

AnyStore = Union[LanceStore, QdrantStore]

__all__ = ["AnyStore", "LanceStore", "QdrantStore", "open_store"]


def _split_collection(rest: str, spec: str) -> tuple[str, str]:
    """'dir/sub/collection' -> ('dir/sub', 'collection'); the collection name is required."""
    rest = rest.rstrip("/")
    head, _, name = rest.rpartition("/")
    if not name:
        raise ValueError(f"store spec {spec!r} names no collection (expected .../<collection>)")
    return head, name


def open_store(spec: str | Path, *, dim: int | None = None, multivector_dim: int | None = None,
               multivector_storage: MultivectorStorage | None = None, create: bool = True) -> AnyStore:
    """Open (or create) the store ``spec`` names.

    An existing store keeps what it was built with: ``dim``/``multivector_dim``/``multivector_storage``
    left as None are read back from it, and explicit values that differ raise ValueError. A new
    store needs ``dim``; ``multivector_storage`` defaults to float16 there. ``create=False`` turns a
    missing store into FileNotFoundError instead of creating it.
    """
    kw = dict(dim=dim, multivector_dim=multivector_dim, multivector_storage=multivector_storage, create=create)
    text = str(spec)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("qdrant", "qdrants"):
        from qdrant_client import QdrantClient

        parts = urlsplit(text)
        if not parts.hostname:
            raise ValueError(f"store spec {text!r} has no host (expected qdrant://host:6333/collection)")
        collection = parts.path.strip("/")
        if not collection or "/" in collection:
            raise ValueError(f"store spec {text!r}: expected exactly one collection name after the host")
        url = f"{'https' if scheme == 'qdrants' else 'http'}://{parts.hostname}:{parts.port or 6333}"
        # no version probe: an unreachable server then fails on first use with a clear error
        client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None, check_compatibility=False)
        try:
            return QdrantStore(client, collection, **kw)
        except BaseException:
            client.close()
            raise
    if scheme in ("qdrant+local", "qdrant+memory"):
        from qdrant_client import QdrantClient

        rest = text.split("://", 1)[1]
        if scheme == "qdrant+memory":
            collection = rest.strip("/")
            if not collection or "/" in collection:
                raise ValueError(f"store spec {text!r}: expected qdrant+memory:///<collection>")
            client, local_path = QdrantClient(location=":memory:"), None
        else:
            folder, collection = _split_collection(rest, text)
            if not folder:
                raise ValueError(f"store spec {text!r} names no directory (expected qdrant+local:///dir/collection)")
            if not create and not Path(folder).is_dir():
                raise FileNotFoundError(f"no qdrant local storage at {folder}")
            client, local_path = QdrantClient(path=folder), folder
        try:
            return QdrantStore(client, collection, local_path=local_path, is_local=True, **kw)
        except BaseException:
            client.close()
            raise
    if scheme:
        raise ValueError(f"unknown store scheme {scheme!r} in {text!r}: use a directory path, qdrant://, "
                         "qdrants://, qdrant+local:// or qdrant+memory://")
    return LanceStore(Path(text), **kw)


def _check_protocol(store: AnyStore) -> Store:   # static check: both classes satisfy Store
    return store
