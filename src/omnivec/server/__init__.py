"""HTTP server: Jina- and OpenAI-compatible ``/v1/embeddings`` over one batching engine.

``create_app(embedder)`` builds the FastAPI app (``app.py``); ``protocol.py`` holds both wire
formats, ``engine.py`` the cross-request batching, ``security.py`` API keys and body caps.
"""
from .app import ServerSettings, create_app

__all__ = ["create_app", "ServerSettings"]
