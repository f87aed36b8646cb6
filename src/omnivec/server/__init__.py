"""HTTP server: Jina- and OpenAI-compatible ``/v1/embeddings`` over one batching engine.

``create_app(embedder)`` builds the FastAPI app (``app.py``: lifespan, routes, disconnects);
``settings.py`` holds ``ServerSettings``, ``protocol.py`` both wire formats, ``dialects/`` one
adapter per dialect (request -> spec, response layout), ``pipeline.py`` the shared path between
(checks, compute, Matryoshka + wire encodings), ``errors.py`` the error envelopes,
``engine.py`` the cross-request batching and admission, ``security.py`` API keys and body caps,
``jsonbody.py`` the JSON content type and depth bound, ``openapi.py`` the served contract of
``/v1/embeddings``. Every limit is listed in ``docs/SECURITY.md``.
"""
from .app import create_app
from .settings import ServerSettings

__all__ = ["create_app", "ServerSettings"]
