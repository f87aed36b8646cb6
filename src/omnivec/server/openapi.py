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


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


UNAUTHORIZED = {"401": _json("ErrorEnvelope", ERRORS[401])}

EMBEDDINGS_OPERATION: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A Jina-dialect or an OpenAI-dialect request. OpenAI when the body has "
                       "encoding_format or user, or token-id input; Jina otherwise.",
        "content": {"application/json": {"schema": {"anyOf": [_ref("JinaRequest"), _ref("OpenAIRequest")]}}},
    },
    "responses": {"200": _json("EmbeddingResponse", "The embeddings (sent as a chunked stream)."),
                  **{str(status): _json("ErrorEnvelope", text) for status, text in ERRORS.items()}},
}
MODELS_OPERATION: dict[str, Any] = {"responses": {"200": _json("ModelList", "The served model names."),
                                                  **UNAUTHORIZED}}
METRICS_OPERATION: dict[str, Any] = {"responses": UNAUTHORIZED}
HEALTH_OPERATION: dict[str, Any] = {"responses": {"200": _json("Status", "The process is up.")}}
READY_OPERATION: dict[str, Any] = {"responses": {
    "200": _json("Status", "The model is loaded."),
    "503": _json("Status", "Still loading (status loading) or the load failed (status error, detail why); "
                           "see Retry-After.")}}
# Operations that need the API key when the server has keys (/metrics unless public_metrics).
PROTECTED = ("/v1/embeddings", "/v1/models")


def schemas() -> dict[str, Any]:
    """JSON schemas of the request, response and error models, keyed by model name, refs into components."""
    models = (protocol.JinaRequest, protocol.OpenAIRequest, protocol.ErrorEnvelope, protocol.EmbeddingResponse,
              protocol.ModelList, protocol.Status)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    return top["$defs"]


def install(app: FastAPI, protected: tuple[str, ...] = ()) -> None:
    """Make ``app.openapi()`` include the models the operations above refer to, and declare
    Bearer authentication on the ``protected`` paths (the server has keys)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(schemas())
            if protected:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path in protected:
                    for operation in schema["paths"].get(path, {}).values():
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
