"""API errors and their envelopes: Jina ``{detail, code, request_id, errors}``, OpenAI ``{error}``.

Every failure of a request is an :class:`ApiError`; the route answers it with the envelope of
the request's dialect, or both envelopes merged when the dialect is not known yet
(authentication, body size, malformed JSON).
"""
from __future__ import annotations

from pydantic import ValidationError

from ..inputs import InputError
from . import protocol


class ApiError(Exception):
    """A 4xx/5xx with a machine code, the offending field, and optional Jina ``errors`` list."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 errors: list[dict] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.errors, self.headers = errors, headers


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                 503: "server_error", 500: "server_error"}


def error_body(err: ApiError, dialect: str | None, request_id: str) -> dict:
    """Dialect shape, or both envelopes merged when the dialect is not known yet."""
    jina = protocol.jina_error(err.message, err.code, request_id, err.errors)
    openai = protocol.openai_error(err.message, _OPENAI_TYPES.get(err.status, "invalid_request_error"),
                                   err.param, err.code.lower())
    if dialect == "jina":
        return jina
    if dialect == "openai":
        return openai
    return {**jina, **openai}


def unauthorized() -> ApiError:
    return ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    "AUTH_INVALID_API_KEY", headers={"WWW-Authenticate": "Bearer"})


def bad(message: str, param: str) -> ApiError:
    """A 422 naming one offending field."""
    return ApiError(422, message, "INPUT_VALIDATION_ERROR", param=param,
                    errors=[{"field": param, "message": message, "type": "value_error"}])


def input_error(e: InputError, paths: list[str]) -> ApiError:
    """A library :class:`InputError` as a 422; ``paths`` are the request's field path per input."""
    if e.index is None:
        return ApiError(422, e.reason, "INPUT_VALIDATION_ERROR", param="input")
    path = paths[e.index] if e.index < len(paths) else f"input[{e.index}]"
    message = f"{path}: {e.reason}"
    return ApiError(422, message, "INPUT_VALIDATION_ERROR", param=path,
                    errors=[{"field": path, "message": e.reason, "type": "input_error"}])


def malformed_json(reason: str) -> ApiError:
    return ApiError(400, f"malformed JSON body ({reason})", "INPUT_MALFORMED_JSON")


def unsupported_media_type(content_type: str | None) -> ApiError:
    given = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return ApiError(415, f"the body must be JSON sent as 'Content-Type: application/json' (got {given})",
                    "INPUT_UNSUPPORTED_MEDIA_TYPE", param="Content-Type")


def output_too_large(values: int, cap: int, multivector: bool) -> ApiError:
    """A 422 when the response would carry more values than ``max_response_values``, with how to ask for less."""
    less = ("fewer inputs per request, shorter inputs (or truncate: true), a compact embedding_type "
            "(binary/ubinary cost 1/8, base64 1/4 of float), or dense vectors (return_multivector: false)"
            if multivector else
            "fewer inputs per request, smaller dimensions, or a compact encoding (base64 costs 1/4 of "
            "float; Jina embedding_type binary/ubinary 1/8)")
    message = (f"the response would carry about {values:,} values, over this server's limit "
               f"max_response_values={cap:,}; ask for less: {less}")
    return ApiError(422, message, "OUTPUT_TOO_LARGE", param="input",
                    errors=[{"field": "input", "message": message, "type": "output_too_large"}])


def not_an_object() -> ApiError:
    return ApiError(422, "the body must be a JSON object", "INPUT_VALIDATION_ERROR", param="body",
                    errors=[{"field": "body", "message": "expected an object", "type": "type_error"}])


def validation_error(e: ValidationError) -> ApiError:
    """A pydantic failure as one 422 listing every offending field path (each once)."""
    errors, seen = [], set()
    for item in e.errors(include_url=False):
        loc, message = tuple(item["loc"]), item["msg"]
        if item["type"] == "extra_forbidden":   # the unknown name itself, even when it looks like a tag
            parent = protocol.field_path(loc[:-1])
            path = str(loc[-1]) if parent == "body" else f"{parent}.{loc[-1]}"
            message = "unknown field (not part of this request's schema; check its spelling)"
        else:
            path = protocol.field_path(loc)
        if path in seen:
            continue  # union members repeat the same field
        seen.add(path)
        errors.append({"field": path, "message": message, "type": item["type"]})
    summary = "; ".join(f"{x['field']}: {x['message']}" for x in errors[:5])
    return ApiError(422, f"invalid request: {summary}", "INPUT_VALIDATION_ERROR",
                    param=errors[0]["field"] if errors else None, errors=errors)
