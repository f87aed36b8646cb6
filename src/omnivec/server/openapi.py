"""The served OpenAPI contract of ``POST /v1/embeddings``: both dialects' bodies and every error.

The handler reads the raw body on purpose (the capped read of ``security.py``), so FastAPI
cannot infer the body: it is declared here from the request models of ``protocol.py``, the
same models that validate it, and their JSON schemas are added to ``components.schemas``.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from . import protocol

_REF = "#/components/schemas/{model}"

ERRORS = {
    400: "Malformed JSON body (syntax, or nested too deeply), or ambiguous HTTP framing "
         "(Content-Length with Transfer-Encoding).",
    401: "Missing or invalid API key (only when the server has keys).",
    404: "Unknown model name.",
    408: "The request body did not arrive within the server's body_timeout_s.",
    413: "Request body over the server's size cap.",
    415: "Content-Type is not application/json (or application/*+json).",
    431: "Request headers over the server's size or count limit.",
    422: "Invalid request: wrong types, unknown fields, bad inputs, or a response over the output budget.",
    503: "Model still loading, or the server is busy: a global budget is in use (see Retry-After).",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


EMBEDDINGS_OPERATION: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A Jina-dialect or an OpenAI-dialect request. OpenAI when the body has "
                       "encoding_format or user, or token-id input; Jina otherwise.",
        "content": {"application/json": {"schema": {"anyOf": [_ref("JinaRequest"), _ref("OpenAIRequest")]}}},
    },
    "responses": {str(status): {"description": text,
                                "content": {"application/json": {"schema": _ref("ErrorEnvelope")}}}
                  for status, text in ERRORS.items()},
}


def schemas() -> dict[str, Any]:
    """JSON schemas of the request and error models, keyed by model name, refs into components."""
    models = (protocol.JinaRequest, protocol.OpenAIRequest, protocol.ErrorEnvelope)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return top["$defs"]


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the models that :data:`EMBEDDINGS_OPERATION` refers to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(schemas())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
