"""FastAPI app: ``/v1/embeddings`` (Jina + OpenAI dialects), ``/v1/models``, health, metrics.

Request path: auth -> capped body read -> JSON -> dialect + strict validation -> admission
(back-pressure) -> parse/prepare off the loop -> shared batches in the engine -> encode the
response off the loop. Every failure is a 4xx in the dialect's error shape; a 5xx means a bug.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .. import outputs
from ..embedder import Embedder
from ..inputs import PDF, Image, InputError, InputLimits
from ..models.base import PrepareOptions
from ..tasks import resolve_task
from . import late_chunking, protocol
from .engine import Engine, JobResult, Overloaded
from .metrics import Metrics
from .security import BodyTooLarge, check_api_key, read_body_capped

log = logging.getLogger("omnivec.server")


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


class ApiError(Exception):
    """A 4xx/5xx with a machine code, the offending field, and optional Jina ``errors`` list."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 errors: list[dict] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.errors, self.headers = errors, headers


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
                 503: "server_error", 500: "server_error"}


def _error_body(err: ApiError, dialect: str | None, request_id: str) -> dict:
    """Dialect shape, or both envelopes merged when the dialect is not known yet."""
    jina = protocol.jina_error(err.message, err.code, request_id, err.errors)
    openai = protocol.openai_error(err.message, _OPENAI_TYPES.get(err.status, "invalid_request_error"),
                                   err.param, err.code.lower())
    if dialect == "jina":
        return jina
    if dialect == "openai":
        return openai
    return {**jina, **openai}


class _State:
    """Per-app mutable state (the model may load after the port opens)."""

    def __init__(self) -> None:
        self.embedder: Embedder | None = None
        self.engine: Engine | None = None
        self.model_id = ""
        self.created = int(time.time())
        self.load_error: str | None = None


def create_app(embedder: Embedder | None = None, settings: ServerSettings | None = None, *,
               loader: Callable[[], Embedder] | None = None) -> FastAPI:
    """Build the app around a loaded ``embedder``, or a ``loader`` run in the background at start-up.

    With a loader the port opens at once: ``/health`` answers, ``/ready`` is 503 until loaded.
    """
    if (embedder is None) == (loader is None):
        raise ValueError("give exactly one of embedder or loader")
    settings = settings or ServerSettings()
    metrics = Metrics()
    state = _State()
    keys = [k.encode("utf-8", "surrogateescape") for k in settings.api_keys]
    limits = settings.input_limits()

    def attach(emb: Embedder) -> None:
        engine = Engine(emb, max_wait_ms=settings.max_wait_ms, max_pending_items=settings.max_pending_items,
                        metrics=metrics)
        engine.start()
        state.embedder, state.engine = emb, engine
        state.model_id = str(emb.info().get("model", "omnivec"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = None
        if embedder is not None:
            attach(embedder)
        else:
            async def load() -> None:
                try:
                    emb = await asyncio.get_running_loop().run_in_executor(None, loader)
                except Exception as e:  # noqa: BLE001 - reported by /ready, the server stays up
                    state.load_error = f"{type(e).__name__}: {e}"
                    log.exception("model failed to load")
                    return
                attach(emb)
            loading = asyncio.get_running_loop().create_task(load())
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            if state.engine is not None:
                await state.engine.stop()

    app = FastAPI(title="omnivec", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.omnivec = state
    app.state.metrics = metrics

    def served_names() -> list[str]:
        return [state.model_id, "default", *settings.model_aliases]

    # ------------------------------------------------------------------ small routes
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.engine is None:
            body = {"status": "error" if state.load_error else "loading", "detail": state.load_error}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "model": state.model_id})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        request_id = uuid.uuid4().hex[:16]
        if not check_api_key(request.headers.get("authorization"), keys):
            return _respond_error(_unauthorized(), None, request_id, "models")
        info = state.embedder.info() if state.embedder is not None else {}
        names = served_names() if state.embedder is not None else []
        return JSONResponse(protocol.model_list(names, "omnivec", state.created, info))

    # ------------------------------------------------------------------ embeddings
    def _respond_error(err: ApiError, dialect: str | None, request_id: str, label: str) -> Response:
        metrics.errors.labels(str(err.status), err.code).inc()
        metrics.requests.labels(label, str(err.status)).inc()
        headers = {"X-Request-ID": request_id, **(err.headers or {})}
        return JSONResponse(_error_body(err, dialect, request_id), status_code=err.status, headers=headers)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        dialect: str | None = None
        try:
            if not check_api_key(request.headers.get("authorization"), keys):
                raise _unauthorized()
            if state.engine is None:
                raise ApiError(503, "the model is still loading" if not state.load_error
                               else f"the model failed to load: {state.load_error}", "SERVICE_UNAVAILABLE",
                               headers={"Retry-After": "5"})
            try:
                raw = await read_body_capped(request, settings.max_body_bytes)
            except BodyTooLarge:
                raise ApiError(413, f"request body is larger than {settings.max_body_bytes} bytes",
                               "INPUT_BODY_TOO_LARGE") from None
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(400, f"malformed JSON body ({e})", "INPUT_MALFORMED_JSON") from None
            dialect = protocol.detect_dialect(body)
            response = await _embed(request, body, dialect, request_id)
        except ApiError as err:
            return _respond_error(err, dialect, request_id, dialect or "unknown")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - last resort: log, answer 500, keep serving
            log.exception("unexpected error in /v1/embeddings (request %s)", request_id)
            return _respond_error(ApiError(500, "internal error", "INTERNAL_ERROR"), dialect, request_id,
                                  dialect or "unknown")
        metrics.requests.labels(dialect, "200").inc()
        metrics.latency.labels(dialect).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = request_id
        return response

    async def _embed(request: Request, body: Any, dialect: str, request_id: str) -> Response:
        req = _validate(body, dialect)
        emb, engine = state.embedder, state.engine
        assert emb is not None and engine is not None
        if req.model not in served_names():
            raise ApiError(404, f"model {req.model!r} not found; served: {served_names()}",
                           "INPUT_MODEL_NOT_FOUND", param="model")
        spec = _Spec.from_request(req, dialect, emb, settings.max_inputs)
        try:
            engine.admit(len(spec.inputs))
        except Overloaded as e:
            raise ApiError(503, str(e), "SERVICE_OVERLOADED", headers={"Retry-After": str(e.retry_after)}) from None
        try:
            result, tokens, origins = await _until_disconnect(request, _compute(spec, emb, engine))
        finally:
            engine.release(len(spec.inputs))
        metrics.items.inc(len(origins))
        content = await engine.run_in_prepare_pool(_render, spec, result, tokens, origins, req.model, emb)
        return Response(content, media_type="application/json")

    async def _compute(spec: "_Spec", emb: Embedder, engine: Engine) -> tuple[JobResult, list[int], list[int]]:
        task = resolve_task(spec.task)
        if spec.late_chunking:
            if not late_chunking.supported(emb.model):
                raise ApiError(422, f"late_chunking is not supported by the {emb.model.family} family yet",
                               "INPUT_VALIDATION_ERROR", param="late_chunking")
            try:
                windows, total = await engine.run_in_prepare_pool(
                    late_chunking.plan, emb.model, spec.inputs, task, spec.truncate)
            except InputError as e:
                raise _input_error(e, spec) from None
            dense = await engine.run_exclusive(lambda: late_chunking.embed(emb.model, windows, task))
            n = len(spec.inputs)
            per_item = [total // n + (1 if i < total % n else 0) for i in range(n)]
            return JobResult(dense, None), per_item, list(range(n))
        options = PrepareOptions(truncate=spec.truncate)
        try:
            prepared, origins = await engine.prepare(spec.inputs, [task] * len(spec.inputs), options, limits)
        except InputError as e:
            raise _input_error(e, spec) from None
        result = await engine.submit(prepared, spec.multivector)
        if spec.tokenized:
            spec.token_strings = [_token_strings(emb, p.data) for p in prepared]
        return result, [p.cost for p in prepared], origins

    return app


def _unauthorized() -> ApiError:
    return ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    "AUTH_INVALID_API_KEY", headers={"WWW-Authenticate": "Bearer"})


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (its queued items are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise asyncio.CancelledError("client disconnected")
    return task.result()


async def _disconnected(request: Request) -> None:
    """Returns when the ASGI server reports ``http.disconnect`` (the body is already read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


def _input_error(e: InputError, spec: "_Spec") -> ApiError:
    if e.index is None:
        return ApiError(422, e.reason, "INPUT_VALIDATION_ERROR", param="input")
    path = spec.paths[e.index] if e.index < len(spec.paths) else f"input[{e.index}]"
    message = f"{path}: {e.reason}"
    return ApiError(422, message, "INPUT_VALIDATION_ERROR", param=path,
                    errors=[{"field": path, "message": e.reason, "type": "input_error"}])


def _validate(body: Any, dialect: str) -> Any:
    """Strict pydantic validation; 422 listing every offending field path."""
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object", "INPUT_VALIDATION_ERROR", param="body",
                       errors=[{"field": "body", "message": "expected an object", "type": "type_error"}])
    if dialect == "openai":
        problem = protocol.mixed_dialect_problem(body)
        if problem:
            raise _bad(problem, "input" if "input objects" in problem else problem.split(",")[0].split(" ")[0])
    cls = protocol.OpenAIRequest if dialect == "openai" else protocol.JinaRequest
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        errors, seen = [], set()
        for item in e.errors(include_url=False):
            path = protocol.field_path(tuple(item["loc"]))
            if path in seen:
                continue  # union members repeat the same field
            seen.add(path)
            errors.append({"field": path, "message": item["msg"], "type": item["type"]})
        summary = "; ".join(f"{x['field']}: {x['message']}" for x in errors[:5])
        raise ApiError(422, f"invalid request: {summary}", "INPUT_VALIDATION_ERROR",
                       param=errors[0]["field"] if errors else None, errors=errors) from None


def _bad(message: str, param: str) -> ApiError:
    return ApiError(422, message, "INPUT_VALIDATION_ERROR", param=param,
                    errors=[{"field": param, "message": message, "type": "value_error"}])


@dataclass
class _Spec:
    """A validated request turned into library inputs and output options."""

    dialect: str
    inputs: list[Any]
    paths: list[str]
    task: str
    dimensions: int | None
    normalize: bool
    multivector: bool
    truncate: bool
    late_chunking: bool
    tokenized: bool
    encodings: list[str]
    encoding_list: bool
    token_strings: list[list[str] | None] | None = None

    @classmethod
    def from_request(cls, req: Any, dialect: str, emb: Embedder, max_inputs: int) -> "_Spec":
        if dialect == "openai":
            raw = req.input if isinstance(req.input, list) else [req.input]
            if raw and isinstance(raw[0], int):
                raw = [raw]  # one token-id list
            inputs = [_decode_ids(x, emb, f"input[{i}]") if isinstance(x, list) else x for i, x in enumerate(raw)]
            paths = [f"input[{i}]" for i in range(len(inputs))]
            spec = cls(dialect, inputs, paths, req.task or "text-matching", req.dimensions, True, False,
                       bool(req.truncate), False, False, [req.encoding_format], False)
        else:
            raw = req.input if isinstance(req.input, list) else [req.input]
            inputs, paths = [], []
            for i, x in enumerate(raw):
                if isinstance(x, str):
                    inputs.append(x), paths.append(f"input[{i}]")
                elif isinstance(x, protocol.TextDoc):
                    inputs.append(x.text), paths.append(f"input[{i}].text")
                elif isinstance(x, protocol.ImageDoc):
                    inputs.append(Image(x.image)), paths.append(f"input[{i}].image")
                else:
                    inputs.append(PDF(x.pdf)), paths.append(f"input[{i}].pdf")
            et = req.embedding_type or "float"
            spec = cls(dialect, inputs, paths, req.task or "text-matching", req.dimensions,
                       req.normalized is not False, bool(req.return_multivector), bool(req.truncate),
                       bool(req.late_chunking), bool(req.return_tokenized_input),
                       list(dict.fromkeys(et)) if isinstance(et, list) else [et], isinstance(et, list))
            if spec.multivector and spec.dimensions is not None:
                raise _bad("dimensions cannot be used with return_multivector (multi-vectors keep "
                           f"{emb.multivector_dim} dimensions)", "dimensions")
            if spec.tokenized and not spec.multivector:
                raise _bad("return_tokenized_input requires return_multivector=true", "return_tokenized_input")
            if spec.late_chunking:
                if spec.multivector:
                    raise _bad("late_chunking cannot be combined with return_multivector", "late_chunking")
                bad = [p for p, x in zip(paths, inputs) if not isinstance(x, str)]
                if bad:
                    raise _bad("late_chunking works on text inputs only", bad[0])
            if not spec.encodings:
                raise _bad("embedding_type list is empty", "embedding_type")
        if not spec.inputs:
            raise _bad("input is empty: send at least one item", "input")
        if len(spec.inputs) > max_inputs:
            raise _bad(f"too many inputs: {len(spec.inputs)} > {max_inputs}", "input")
        try:
            outputs.check_dimensions(spec.dimensions, emb.dim)
        except ValueError as e:
            raise _bad(str(e), "dimensions") from None
        return spec


def _decode_ids(ids: list[int], emb: Embedder, path: str) -> str:
    """Token ids are read in the served model's own vocabulary and decoded back to text."""
    tok = getattr(emb.model, "tokenizer", None)
    if tok is None or not hasattr(tok, "decode"):
        raise _bad("token-id input is not supported by this model", path)
    size = tok.get_vocab_size() if hasattr(tok, "get_vocab_size") else len(tok)
    bad = next((t for t in ids if not 0 <= t < size), None)
    if bad is not None:
        raise _bad(f"token id {bad} is out of range for this model's vocabulary (0..{size - 1})", path)
    if not ids:
        raise _bad("empty token-id list", path)
    return tok.decode(ids, skip_special_tokens=True)


def _token_strings(emb: Embedder, data: dict) -> list[str] | None:
    tok = getattr(emb.model, "tokenizer", None)
    ids = data.get("input_ids")
    if tok is None or ids is None or not hasattr(tok, "id_to_token"):
        return None
    return [tok.id_to_token(int(i)) or "" for i in ids]


def _encode(vectors: np.ndarray, encoding: str) -> Any:
    """One vector (1-D) or a token matrix (2-D) in one of the wire encodings."""
    if encoding == "float":
        return vectors.tolist()
    if encoding == "base64":
        if vectors.ndim == 1:
            return outputs.to_base64(vectors.astype(np.float32))
        return [outputs.to_base64(v.astype(np.float32)) for v in vectors]
    packed = outputs.quantize(np.atleast_2d(vectors), encoding)
    return packed[0].tolist() if vectors.ndim == 1 else packed.tolist()


def _render(spec: _Spec, result: JobResult, tokens: list[int], origins: list[int], model_name: str,
            emb: Embedder) -> bytes:
    """Post-process (Matryoshka, normalise, encode) and serialise; runs off the event loop."""
    pdf_pages: dict[int, int] = {}
    data = []
    if spec.multivector:
        vectors: list[np.ndarray] = result.multivector or []
    else:
        vectors = list(outputs.truncate_normalize(result.dense, spec.dimensions, spec.normalize))
    for i, (vec, origin) in enumerate(zip(vectors, origins)):
        values = {e: _encode(vec, e) for e in spec.encodings}
        payload = values if spec.encoding_list else values[spec.encodings[0]]
        if spec.multivector:
            item: dict[str, Any] = {"object": "embeddings", "index": i, "embeddings": payload}
            if spec.tokenized and spec.token_strings is not None:
                item["tokenized_input"] = spec.token_strings[i]
        else:
            item = {"object": "embedding", "index": i, "embedding": payload}
        if isinstance(spec.inputs[origin], PDF):
            item["input_index"] = origin
            item["page"] = pdf_pages.get(origin, 0)
            pdf_pages[origin] = item["page"] + 1
        data.append(item)
    body = {"object": "list", "model": model_name, "data": data, "usage": protocol.usage(int(sum(tokens)))}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
