"""FastAPI app: ``/v1/embeddings`` (Jina + OpenAI dialects), ``/v1/models``, health, metrics.

Request path: HTTP framing and header limits (``framing.py``; header timeout in ``http.py``) ->
auth -> JSON content type -> capped, deadline-bound body read -> JSON (depth-bounded) ->
dialect (``dialects/``) + strict validation -> admission by cost (``admission.py``: items,
then pixels, tokens, bytes and response values as each becomes known) -> URL inputs fetched on
their own pool -> parse/prepare off the loop -> shared batches in the engine -> post-process,
encoded vector by vector while streaming (``pipeline.py``, ``jsonstream.py``). Every failure is
a 4xx in the dialect's error shape (``errors.py``); a 5xx means a bug.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from ..embedder import Embedder
from . import framing, jsonbody, openapi, pipeline, protocol
from .dialects import DIALECTS
from .access_log import log_request
from .admission import Overloaded, Ticket
from .engine import Engine
from .errors import ApiError, error_body, unauthorized
from .metrics import Metrics
from .security import BodyTimeout, BodyTooLarge, check_api_key, read_body_capped
from .settings import ServerSettings

log = logging.getLogger("omnivec.server")

__all__ = ["ServerSettings", "create_app"]


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
        engine = Engine(emb, max_wait_ms=settings.max_wait_ms, budgets=settings.budgets(),
                        fetch_workers=settings.fetch_workers, metrics=metrics)
        engine.start()
        state.embedder, state.engine = emb, engine
        state.model_id = str(emb.info().get("model", "omnivec"))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = None
        if embedder is not None:
            await asyncio.get_running_loop().run_in_executor(None, embedder.model.load_all_tasks)
            attach(embedder)
        else:
            def load_ready() -> Embedder:   # /ready means ready for every task: no request builds a graph
                emb = loader()
                emb.model.load_all_tasks()
                return emb

            async def load() -> None:
                try:
                    emb = await asyncio.get_running_loop().run_in_executor(None, load_ready)
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

    # /openapi.json and /docs are routes of ours (below), so that they can need the API key.
    app = FastAPI(title="omnivec", version="0.1.0", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.omnivec = state
    protected = (*openapi.PROTECTED, *(() if settings.public_metrics else ("/metrics",))) if keys else ()
    openapi.install(app, protected)
    app.add_middleware(framing.RefuseAmbiguousFraming, max_header_bytes=settings.max_header_bytes)
    app.state.metrics = metrics

    def served_names() -> list[str]:
        return [state.model_id, "default", *settings.model_aliases]

    # ------------------------------------------------------------------ small routes
    @app.get("/health", openapi_extra=openapi.HEALTH_OPERATION)
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", openapi_extra=openapi.READY_OPERATION)
    async def ready() -> JSONResponse:
        if state.engine is None:
            body = {"status": "error" if state.load_error else "loading", "detail": state.load_error}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "model": state.model_id})

    def private(request: Request) -> Response | None:
        """401 for /metrics, /docs and /openapi.json when keys are set and they are not public."""
        if settings.public_metrics or check_api_key(request.headers.get("authorization"), keys):
            return None
        return respond_error(unauthorized(), None, uuid.uuid4().hex[:16], "private")

    @app.get("/metrics", response_class=PlainTextResponse, openapi_extra=openapi.METRICS_OPERATION)
    async def prometheus(request: Request) -> Response:
        return private(request) or Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(request: Request) -> Response:
        return private(request) or JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        return private(request) or get_swagger_ui_html(openapi_url="/openapi.json", title="omnivec API")

    @app.get("/v1/models", openapi_extra=openapi.MODELS_OPERATION)
    async def models(request: Request) -> Response:
        request_id = uuid.uuid4().hex[:16]
        if not check_api_key(request.headers.get("authorization"), keys):
            return respond_error(unauthorized(), None, request_id, "models")
        info = state.embedder.info() if state.embedder is not None else {}
        names = served_names() if state.embedder is not None else []
        return JSONResponse(protocol.model_list(names, "omnivec", state.created, info))

    # ------------------------------------------------------------------ embeddings
    def respond_error(err: ApiError, dialect: str | None, request_id: str, label: str) -> Response:
        metrics.errors.labels(str(err.status), err.code).inc()
        metrics.requests.labels(label, str(err.status)).inc()
        headers = {"X-Request-ID": request_id, **(err.headers or {})}
        return JSONResponse(error_body(err, dialect, request_id), status_code=err.status, headers=headers)

    @app.post("/v1/embeddings", openapi_extra=openapi.EMBEDDINGS_OPERATION)
    async def embeddings(request: Request) -> Response:
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        dialect: str | None = None
        stats: dict[str, int] = {}

        def access(status: int, **fields: Any) -> None:
            log_request(request_id=request_id, route="/v1/embeddings", dialect=dialect, status=status,
                        seconds=round(time.perf_counter() - started, 4), **stats, **fields)
        try:
            if not check_api_key(request.headers.get("authorization"), keys):
                raise unauthorized()
            if state.engine is None:
                raise ApiError(503, "the model is still loading" if not state.load_error
                               else f"the model failed to load: {state.load_error}", "SERVICE_UNAVAILABLE",
                               headers={"Retry-After": "5"})
            jsonbody.require_json_content_type(request.headers.get("content-type"))
            try:
                raw = await read_body_capped(request, settings.max_body_bytes, settings.body_timeout_s)
            except BodyTooLarge:   # the rest of the body is not read: close rather than drain it
                raise ApiError(413, f"request body is larger than {settings.max_body_bytes} bytes",
                               "INPUT_BODY_TOO_LARGE", headers={"Connection": "close"}) from None
            except BodyTimeout as e:
                raise ApiError(408, f"{e} (body_timeout_s)", "REQUEST_TIMEOUT",
                               headers={"Connection": "close"}) from None
            body = jsonbody.parse(raw, settings.max_json_depth)
            dialect = protocol.detect_dialect(body)
            response = await embed(request, body, DIALECTS[dialect], stats)
        except ApiError as err:
            access(err.status, code=err.code)
            return respond_error(err, dialect, request_id, dialect or "unknown")
        except asyncio.CancelledError:
            access(499, code="CLIENT_DISCONNECTED")
            raise
        except Exception:  # noqa: BLE001 - last resort: log, answer 500, keep serving
            log.exception("unexpected error in /v1/embeddings (request %s)", request_id)
            access(500, code="INTERNAL_ERROR")
            return respond_error(ApiError(500, "internal error", "INTERNAL_ERROR"), dialect, request_id,
                                 dialect or "unknown")
        access(200)
        metrics.requests.labels(dialect, "200").inc()
        metrics.latency.labels(dialect).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = request_id
        return response

    async def embed(request: Request, body: Any, dialect: pipeline.Dialect, stats: dict[str, int]) -> Response:
        """The validated request, computed; ``stats`` gets its items and tokens (access log)."""
        req = dialect.validate(body)
        emb, engine = state.embedder, state.engine
        assert emb is not None and engine is not None
        if req.model not in served_names():
            raise ApiError(404, f"model {req.model!r} not found; served: {served_names()}",
                           "INPUT_MODEL_NOT_FOUND", param="model")
        spec = pipeline.build_spec(dialect, req, emb, settings.max_inputs)
        ticket = engine.admission.ticket()
        try:
            ticket.reserve("items", len(spec.inputs))
            work = pipeline.compute(spec, emb, engine, limits, ticket, settings.max_response_values)
            result, tokens, origins = await until_disconnect(request, work)
        except Overloaded as e:
            ticket.release()
            raise ApiError(503, str(e), "SERVICE_OVERLOADED", headers={"Retry-After": str(e.retry_after)}) from None
        except BaseException:
            ticket.release()
            raise
        ticket.release("items")
        stats.update(inputs=len(spec.inputs), items=len(origins), tokens=int(sum(tokens)))
        metrics.items.inc(len(origins))
        chunks = pipeline.render(dialect, spec, result, tokens, origins, req.model)
        return StreamingResponse(stream_then_release(chunks, ticket), media_type="application/json")

    return app


async def stream_then_release(chunks: Iterator[bytes], ticket: Ticket) -> AsyncIterator[bytes]:
    """Send the response chunks (encoded on a worker thread, off the loop), then give back the
    response's reserved values, also when the client leaves mid-stream."""
    try:
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk
    finally:
        ticket.release()


async def until_disconnect(request: Request, work: Any) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (its queued items are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected(request))
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


async def disconnected(request: Request) -> None:
    """Returns when the ASGI server reports ``http.disconnect`` (the body is already read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return
