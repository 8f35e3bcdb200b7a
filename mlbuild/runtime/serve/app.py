"""The Starlette application: OIP v2 routes, the v1 predict route, health, metrics, lifecycle.

Lifecycle: the app starts with the package validated but no weights; its lifespan starts a
background task that loads the model in a thread, so the server binds its port at once and
``/v2/health/ready`` turns 200 only once the weights are loaded and warmed up. ``begin_drain``
(called on SIGTERM) turns readiness false while uvicorn finishes the requests in flight.

Every error is a JSON ``{"error": "..."}``: 4xx for what the client sent, 503 while loading or
draining, 500 (logged) when the model itself fails.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import re
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from mlbuild import __version__

from .batching import MicroBatcher
from .infer import INFER_ROUTES, SHUTDOWN_CUT, InferEndpoint, failure, infer_route, read_body
from .live import FeedbackError, LiveQuality
from .metrics import CONTENT_TYPE_LATEST, MetricsMiddleware, ServerMetrics
from .model import LoadedModel, load_model
from .names import PROBE_HEADER
from .package import MODEL_VERSION, Package
from .protocol import InferCodec, InputGuard, ProtocolError, decode_predict, encode_predict, error_body

__all__ = ["ServerState", "create_app", "LOAD_THREAD"]

log = logging.getLogger("mlbuild.serve")

_JSON = "application/json"
_PLATFORM = "mlbuild_pytorch"


def _predicted_output(pkg: Package) -> str | None:
    """The output feedback is compared with: a classifier's ``label``; a regression model's first
    output (as the validation report takes it) when it holds one value per row."""
    if pkg.task != "regression":
        return "label"
    first = pkg.outputs[0] if pkg.outputs else None
    return first.name if first is not None and first.shape[1:] in ((), (1,)) else None


def _class_count(pkg: Package) -> int | None:
    """The model's number of classes: its class names, else a fixed last dimension of its
    ``probabilities`` output; None if neither says."""
    if pkg.labels:
        return len(pkg.labels)
    probabilities = pkg.output("probabilities")
    if probabilities is not None and len(probabilities.shape) == 2 and probabilities.shape[1] > 0:
        return probabilities.shape[1]
    return None


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data).encode(), status_code=status, media_type=_JSON)


#: The name of the thread that loads the model (``_in_daemon_thread``): the process's entry point
#: (``__main__.main``) looks for it once the server has stopped.
LOAD_THREAD = "mlbuild-load"


async def _in_daemon_thread(work: Callable[[], LoadedModel]) -> LoadedModel:
    """``work()`` in a daemon thread: asyncio.to_thread's worker is joined at exit, so a SIGTERM or
    Ctrl-C while the model was still loading (a slow or stuck build_model) left the process running
    until the load ended, whatever signal came next."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[LoadedModel] = loop.create_future()

    def settle(value: LoadedModel | None, error: BaseException | None) -> None:
        if future.done():   # the server stopped before the load ended
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            value, error = work(), None
        except BaseException as e:
            value, error = None, e
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:   # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name=LOAD_THREAD, daemon=True).start()
    return await future


class ServerState:
    """What the routes share: the package, the model once loaded, the batcher, readiness."""

    def __init__(self, pkg: Package, metrics: ServerMetrics, threads: int | None = None, verify: bool = True,
                 on_load_failure: Callable[[BaseException], None] | None = None) -> None:
        self.pkg, self.metrics = pkg, metrics
        self.threads, self.verify = threads, verify
        self.on_load_failure = on_load_failure
        self.model: LoadedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: BaseException | None = None
        self.draining = False
        self.codec = InferCodec(pkg)
        metrics.set_package(pkg.name, pkg.hashes)
        reference = pkg.root / "model" / "reference.json"
        ref = json.loads(reference.read_text()) if reference.is_file() else None
        self.guard = InputGuard.from_reference(ref)
        self.live = LiveQuality(pkg.name, ref,
                                list(pkg.labels) if pkg.labels is not None else None, metrics.registry,
                                classes=_class_count(pkg), regression=pkg.task == "regression",
                                output=_predicted_output(pkg))

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    def begin_drain(self) -> None:
        """Readiness false from now on; the requests in flight still complete."""
        self.draining = True
        self.metrics.ready.set(0)

    async def load(self) -> None:
        try:
            model = await _in_daemon_thread(lambda: load_model(self.pkg, self.threads, self.verify))
        except Exception as e:  # a broken package: say why, then let the server exit non-zero
            log.error("loading %s failed: %s", self.pkg.root, e)
            self.load_error = e
            if self.on_load_failure is not None:
                self.on_load_failure(e)
            return
        # What is loaded by now (torch, numpy, the model, the app) lives as long as the server: move
        # it out of the collector's reach, so that a full collection under load scans only the
        # requests' own objects. Measured here (digits, 32 connections): gen-2 collections took
        # ~75 ms each, every ~0.7 s (p99 latency 79 ms); frozen, ~1 ms (p99 14 ms, +13% req/s).
        gc.collect()
        gc.freeze()
        settings = self.pkg.settings
        batcher = MicroBatcher(model.run, settings.max_batch_size, settings.max_wait_ms / 1000.0,
                               on_batch=self.metrics.observe_batch, thread_init=model.bind_thread,
                               guard=self.guard)
        batcher.start()
        if self.live.classes is None and model.classes is not None:
            # A classifier without class names, whose config declares its probabilities [-1, -1]:
            # counted by its outputs, as the validation counts it, so that a two-class model's live
            # precision, recall and F1 (class 1's) are published as the report has them, and
            # feedback naming a class the model does not have is refused.
            self.live.classes = model.classes
        self.model, self.batcher = model, batcher
        self.metrics.load_seconds.set(model.load_seconds)
        self.metrics.ready.set(0 if self.draining else 1)
        log.info("model %s loaded in %.1f ms (%d thread(s)); ready", self.pkg.name, model.load_seconds * 1000,
                 model.threads)

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.pkg.name:
            raise ProtocolError(404, f"unknown model {name!r:.100}; this server serves {self.pkg.name!r}")
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(404, f"model {name!r} has no version {version!r:.50}; it has [{MODEL_VERSION!r}]")

    def require_batcher(self) -> MicroBatcher:
        """The batcher, or a 503 while the model is still loading."""
        if self.batcher is None:
            raise ProtocolError(503, f"model {self.pkg.name!r} is not loaded yet; poll /v2/health/ready")
        return self.batcher

    def model_metadata(self) -> dict[str, Any]:
        pkg = self.pkg
        return {
            "name": pkg.name,
            "versions": [MODEL_VERSION],
            "platform": _PLATFORM,
            "inputs": [s.metadata() for s in pkg.inputs],
            "outputs": [s.metadata() for s in pkg.outputs],
            "hashes": dict(pkg.hashes),
            "task": pkg.task,
            "labels": list(pkg.labels) if pkg.labels is not None else None,
            "parameters": {"max_batch_size": pkg.settings.max_batch_size, "max_wait_ms": pkg.settings.max_wait_ms},
        }


async def _request_body(request: Request, state: ServerState) -> bytes:
    return await read_body(request.headers, request.stream(), state.pkg.settings.max_body_bytes)


Handler = Callable[[Request, ServerState], Awaitable[Response]]


def _endpoint(handler: Handler, state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, state)
        except Exception as e:
            status, body = failure(e, request.method, request.url.path)
            return Response(body, status_code=status, media_type=_JSON)
        except asyncio.CancelledError:
            if not state.draining:
                raise
            # the graceful timeout ran out (a :predict or feedback body still arriving): a JSON
            # 503, as the infer route answers, not uvicorn's text/plain 500 and traceback
            return Response(error_body(SHUTDOWN_CUT), status_code=503, media_type=_JSON)
    return endpoint


def _check(request: Request, state: ServerState) -> None:
    state.check_model(request.path_params["name"], request.path_params.get("version"))


async def _live(request: Request, state: ServerState) -> Response:
    return _json({"live": True})


async def _ready(request: Request, state: ServerState) -> Response:
    return _json({"ready": state.ready}, 200 if state.ready else 503)


async def _server_metadata(request: Request, state: ServerState) -> Response:
    return _json({"name": "mlbuild", "version": __version__, "extensions": ["binary_tensor_data"]})


async def _model_metadata(request: Request, state: ServerState) -> Response:
    _check(request, state)
    return _json(state.model_metadata())


async def _model_ready(request: Request, state: ServerState) -> Response:
    _check(request, state)
    return _json({"name": state.pkg.name, "ready": state.ready}, 200 if state.ready else 503)


async def _v1_status(request: Request, state: ServerState) -> Response:
    # Every method comes here: /v1/models/{name} also matches NAME:VERB, the predict route takes
    # POST NAME:predict only, and the answer must name what is wrong (not a 405 for one method
    # and an unknown model 'digits:explain' for another).
    name, colon, verb = request.path_params["name"].partition(":")
    if colon and verb == "predict" and not name:
        raise ProtocolError(404, f"{request.url.path[:200]}: no model name; the v1 route is "
                                 f"POST /v1/models/{state.pkg.name}:predict")
    if colon and verb == "predict":
        return _not_allowed(request, "POST")
    if colon:
        raise ProtocolError(404, f"{request.url.path[:200]}: no verb {verb[:50]!r}; the v1 route is "
                                 f"POST /v1/models/{name[:50]}:predict")
    if request.method not in ("GET", "HEAD"):
        return _not_allowed(request, "GET")
    _check(request, state)
    # 503 while not ready, as the v2 model-ready route and KServe's v1 server answer: a readiness
    # probe on this path (KServe's v1 health route) took a loading or draining server as ready
    return _json({"name": state.pkg.name, "ready": state.ready}, 200 if state.ready else 503)


async def _v1_predict(request: Request, state: ServerState) -> Response:
    _check(request, state)
    batcher = state.require_batcher()
    batcher.arriving(1)
    submitted = False
    try:
        req = decode_predict(state.pkg, await _request_body(request, state))
        submitted = True
        results = await batcher.submit(req.array, arrived=True)
    finally:
        if not submitted:
            batcher.arriving(-1)
    request_id = state.live.request_id(req.id)  # as the v2 route: an id for feedback, inputs for drift
    content = encode_predict(state.pkg, results, request_id)
    if PROBE_HEADER not in request.headers:
        state.live.observe_response(request_id, req.array, results)
    return Response(content, media_type=_JSON)


async def _feedback(request: Request, state: ServerState) -> Response:
    """Ground truth for earlier requests: {"feedback": [{"id": ..., "labels": [...]}]} (see live.py)."""
    _check(request, state)
    body = await _request_body(request, state)
    try:
        data = json.loads(body)
    except ValueError as e:
        raise ProtocolError(400, f"feedback is not valid JSON: {e}") from None
    except RecursionError:   # nested deeper than the parser goes: a 400, as the infer routes answer
        raise ProtocolError(400, "feedback is not valid JSON: nested too deeply") from None
    try:
        return _json(state.live.add_feedback(data))
    except FeedbackError as e:
        raise ProtocolError(400, str(e)) from None


async def _metrics(request: Request, state: ServerState) -> Response:
    state.live.refresh(force=True)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _not_allowed(request: Request, allow: str) -> Response:
    return Response(error_body(f"method {request.method} is not allowed on {request.url.path[:200]}; use {allow}"),
                    status_code=405, media_type=_JSON, headers={"Allow": allow})


_PROBE = re.compile(r"^(?:/v2)?/(?:health|healthz|healthcheck|livez|readyz|ready|live|ping)/?$")
_ROUTE_START = re.compile(r"(?=/(?:v2(?:/|$)|v1/|metrics$))")   # a lookahead: /a/v2/v2/... tries both


def _proxy_prefix(request: Request) -> str | None:
    """The prefix before one of this server's routes in the path (``/digits`` of
    ``/digits/v2/health/ready``): what a reverse proxy passed on instead of stripping it. Each
    place a route may start is tried: a gateway's prefix may hold a /v1/ or /v2 of its own
    (``/api/v1/digits/v2/health/ready``), which the first try alone took for the route."""
    path = request.url.path
    # a wrong path of the server's own (/v2/metrics, /v1/metrics, /v2/v2 named "the prefix '/v2'")
    if path.startswith(("/v1/", "/v2/")) or path in ("/v1", "/v2"):
        return None
    # the first few places only: a 64 KiB path of /v1/x/v1/x/... took 0.1 s of the event loop
    for match in itertools.islice(_ROUTE_START.finditer(path), 8):
        if match.start() > 0 and _routed(request, path[match.start():]):
            return path[:match.start()]
    return None


def _routed(request: Request, path: str) -> bool:
    scope = {"type": "http", "path": path, "method": request.method}
    return any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path[:200]
    if exc.status_code == 405:
        return _not_allowed(request, (exc.headers or {}).get("Allow", "GET"))
    message = exc.detail
    if exc.status_code == 404:
        prefix = _proxy_prefix(request)
        if path == "/" or _PROBE.search(path):   # a load balancer's default health check (AWS, Google
            # Cloud), or a probe path of another server's (/healthz, /ping, /v2/health): "see /v2" named neither
            fix = ("a health check: GET /v2/health/ready (readiness: 503 while loading or stopping) or "
                   "/v2/health/live (liveness); the API: /v2 and /v2/models/{name}")
        elif path.startswith("//") and _routed(request, "/" + path.lstrip("/")):
            # nginx's `location /digits { proxy_pass http://BACKEND/; }` turns /digits/v2/... into //v2/...
            fix = ("the path begins with two slashes: behind a proxy that strips a prefix, end its location with a "
                   "slash as its proxy_pass does (nginx: `location /PREFIX/` with `proxy_pass http://BACKEND/;`)")
        elif prefix is not None:
            fix = (f"this server's routes start at /v2, /v1 and /metrics: behind a proxy, have it strip the prefix "
                   f"{prefix[:100]!r} (nginx: `proxy_pass http://BACKEND/;` in `location {prefix[:100]}/`, with the "
                   "trailing slash)")
        elif len(path) > 1 and path.endswith("/"):
            fix = "drop the trailing slash"
        else:
            fix = "see /v2 and /v2/models/{name}"
        message = f"no route {request.method} {path}; {fix}"
    return Response(error_body(message), status_code=exc.status_code, media_type=_JSON, headers=exc.headers)


def create_app(state: ServerState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app serving ``state.pkg``; its lifespan loads the model in the background."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(state.load())
        try:
            yield
        finally:
            state.begin_drain()
            if not task.done():
                log.info("stopping before model %s finished loading", state.pkg.name)
                task.cancel()
            if state.batcher is not None:
                await asyncio.to_thread(state.batcher.stop)

    infer = InferEndpoint(state)

    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, _endpoint(handler, state), methods=methods)

    routes = [
        route("/v2/health/live", _live, ["GET"]),
        route("/v2/health/ready", _ready, ["GET"]),
        route("/v2", _server_metadata, ["GET"]),
        # the protocol's OpenAPI (open_inference_rest.yaml) names this route `/v2/`: a client
        # generated from it asks there (other trailing slashes are a 404 naming the fix)
        route("/v2/", _server_metadata, ["GET"]),
        route("/v2/models/{name}", _model_metadata, ["GET"]),
        route("/v2/models/{name}/versions/{version}", _model_metadata, ["GET"]),
        route("/v2/models/{name}/ready", _model_ready, ["GET"]),
        route("/v2/models/{name}/versions/{version}/ready", _model_ready, ["GET"]),
        *(Route(path, infer, methods=["POST"]) for path in INFER_ROUTES),
        route("/v2/models/{name}/feedback", _feedback, ["POST"]),
        route("/v1/models/{name}:predict", _v1_predict, ["POST"]),
        # every method: the handler names the fix (Starlette's own 405 would list these methods
        # in Allow, and each of them answers "use GET")
        route("/v1/models/{name}", _v1_status, ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                                                "CONNECT"]),
        route("/metrics", _metrics, ["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    # No 307 to the path without (or with) a trailing slash: its Location is built from the Host
    # header, and an API client should fix its URL, so such paths get a 404 naming the fix.
    app.router.redirect_slashes = False
    measured = MetricsMiddleware(app, state.metrics)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        route = infer_route(scope)
        if route is not None:
            await infer.answer(scope, receive, send, route)
        else:
            await measured(scope, receive, send)
    return asgi
