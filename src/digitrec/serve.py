"""The REST API and the drawing page: `digitrec serve`.

`create_app` builds a FastAPI app around one `Recognizer`, loaded once and kept on `app.state`.
`POST /api/recognize` takes an image (a multipart field `file` or the raw body) and answers the
JSON of `digitrec recognize --json`; `GET /` is a page to draw digits on, read live as you draw.
Requests are read in a pool of one worker thread per core of this process's share, first come
first served, and take turns on the model, so the event loop never waits for decoding or
inference. Operators get `GET /metrics` (Prometheus), `GET /api/ready` and bounds on everything a
client can hold: connections, request heads and bodies (size and time), uploads and queued work.
`run_server` runs one or more worker processes; `serve_in_thread` starts a server on a free port
for the tests.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import functools
import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import h11
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from digitrec import checkpoint
from digitrec.config import available_cores
from digitrec.recognize import ImageResult, Recognizer

STATIC_DIR = Path(__file__).parent / "static"
# A drawing or a phone photo is well under this; the decoder's own limit is higher, but a web
# request has no business being larger.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
# Request line and headers. A browser sends under 2 KiB; h11 answers 400 past this.
MAX_HEAD_BYTES = 16 * 1024
RAW_TYPES = ("application/octet-stream", "")  # besides image/*; "" is a body with no type
# The drawing page loads only its own files and shows the model's inputs as data: URLs.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"
# How `run_server` hands its settings to the worker processes, which build their own app.
SETTINGS_VARIABLE = "DIGITREC_SERVE_SETTINGS"
# With several worker processes, the file where a worker that reloaded says which model it
# loaded: the others see the file change and load the same model before their next answer.
RELOAD_FILE_VARIABLE = "DIGITREC_RELOAD_FILE"
# Seconds to wait before asking again, sent with every 503 this server makes.
RETRY_AFTER_S = 1
# A refusal sent before reading the rest of the request: closing the connection is the only way
# to stop a client from sending a body nobody will read.
CLOSE_HEADERS = {"Connection": "close"}
REFUSAL_HEADERS = {"Retry-After": str(RETRY_AFTER_S), **CLOSE_HEADERS}
# What the metrics count for a request whose client left before it was read (nginx's code).
CLIENT_LEFT = 499
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
logger = logging.getLogger("digitrec.serve")


# --- schemas ------------------------------------------------------------------------------------


class DigitReading(BaseModel):
    digit: int = Field(ge=0, le=9, description="the digit read")
    confidence: float = Field(description="calibrated probability of that digit, 0..1")
    probabilities: list[float] = Field(description="probability of each class 0..9")
    box: list[int] = Field(description="x, y, width, height in the image's pixels")
    uncertain: bool = Field(description="confidence below the threshold where errors are common")
    not_digit: bool = Field(
        False, description="a mark that is not a digit (a letter, a symbol, a scribble); "
        "left out of number and text",
    )  # fmt: skip
    image: str | None = Field(
        None,
        description="with ?stages=1 only: the 28x28 image the model saw (white on black), "
        "as a data:image/png;base64 URL",
    )


class LineReading(BaseModel):
    text: str = Field(description="the line's digits and separators, left to right")
    box: list[int] = Field(description="x, y, width, height of the line in the image's pixels")
    digits: list[DigitReading]


class Recognition(BaseModel):
    path: str = Field(description="the uploaded file's name, or <body> for a raw body")
    number: str = Field(description='the first line\'s digits and separators ("3.14"), left to '
                        'right; "" when no digit was found')  # fmt: skip
    text: str = Field("", description="every line's text, top to bottom, joined by newlines")
    lines: list[LineReading] = Field(default_factory=list, description="text lines, top down")
    digits: list[DigitReading]


class Problem(BaseModel):
    detail: str = Field(description="one line saying what was wrong with the request")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    backend: str


class Readiness(BaseModel):
    status: Literal["ready"] = Field(description="the model has answered a warm-up request")
    model: str


class Dataset(BaseModel):
    name: str | None = None
    sha256: dict[str, str] = Field(default_factory=dict, description="digest of each data file")


class ModelCard(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="registered model name")
    backend: str = Field(description="torch or onnx")
    parameters: int | None = None
    classes: list[str] = Field(default_factory=list)
    test_accuracy: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    dataset: Dataset = Field(default_factory=Dataset)
    tensors_sha256: str | None = Field(None, description="digest of the weights")
    recipe_name: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict, description="the full training config")
    temperature: float | None = Field(None, description="softmax calibration temperature")
    created: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": Problem, "description": "the body did not arrive within the deadline"},
    413: {"model": Problem, "description": f"body over {MAX_REQUEST_BYTES // 2**20} MiB"},
    415: {"model": Problem, "description": "neither image/* nor multipart/form-data"},
    422: {"model": Problem, "description": "not a readable image (empty, corrupt, too large)"},
    503: {"model": Problem, "description": "busy: retry after the Retry-After header's seconds"},
}


def multipart_body(fields: dict[str, dict[str, str]], raw_image: bool = False) -> dict:
    """The OpenAPI request body of a form with a file and ``fields`` (all required); bodies
    are read by hand (to enforce the size limit while reading), so they are described here.
    ``raw_image``: the image may also come as the whole body."""
    properties = {"file": {"type": "string", "format": "binary"}, **fields}
    form = {"schema": {"type": "object", "properties": properties, "required": list(properties)}}
    content: dict[str, Any] = {"multipart/form-data": form}
    if raw_image:
        content["image/*"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


RECOGNIZE_BODY = multipart_body({}, raw_image=True)


# --- settings and bounds ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    """How the server runs and what a client may hold; every bound is per worker process.

    A worker holds at most ``max_queue`` request bodies of at most 10 MiB, of which at most
    ``max_uploads`` are still arriving, and answers what is over a bound with a 503 at once
    rather than queueing it without end.
    """

    workers: int = 1  # processes, each with its own model
    threads: int = 0  # threads per worker for reading images; 0: its share of the cores
    max_connections: int = 256  # open sockets, idle ones included; more are refused at once
    max_queue: int = 64  # recognition requests being read or waiting for a thread
    max_uploads: int = 8  # request bodies being received at once
    upload_queue: int = 64  # bodies waiting for one of those slots, each holding 64 KiB at most
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout_s: float = 10.0  # for the whole body, once the server starts reading it
    keep_alive_s: float = 5.0  # an idle connection, before or between requests
    shutdown_timeout_s: float = 30.0  # for requests in flight to finish on SIGTERM or Ctrl-C

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            least = 0 if field.name in ("threads", "upload_queue") else 1
            if isinstance(value, float) and not value > 0:
                raise ValueError(f"{field.name} must be above 0, got {value}")
            if isinstance(value, int) and value < least:
                raise ValueError(f"{field.name} must be at least {least}, got {value}")

    def worker_threads(self) -> int:
        """Threads of one worker for reading requests, ONNX Runtime and OpenCV: its share of the
        cores, so that N workers never run more busy threads than there are cores."""
        return self.threads or max(1, available_cores() // self.workers)


class Gate:
    """At most ``slots`` holders at once and ``waiting`` more queued in order of arrival; past
    that, a newcomer is refused at once, so a flood meets quick 503s instead of a queue that
    grows without end. For one event loop at a time (it is not thread-safe)."""

    def __init__(self, slots: int, waiting: int = 0) -> None:
        self.slots = slots
        self.waiting = waiting
        self.held = 0
        self.queue: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_enter(self) -> bool:
        """Take a slot if one is free now."""
        if self.held < self.slots and not self.queue:
            self.held += 1
            return True
        return False

    async def enter(self) -> bool:
        """Take a slot, waiting for one if the queue has room; False when refused."""
        if self.try_enter():
            return True
        if len(self.queue) >= self.waiting:
            return False
        turn = asyncio.get_running_loop().create_future()
        self.queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self.leave()  # the slot was handed over just as the wait was cancelled
            elif turn in self.queue:
                self.queue.remove(turn)
            raise
        return True

    def leave(self) -> None:
        """Give the slot back, straight to the first in the queue if any."""
        while self.queue:
            turn = self.queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.held -= 1


def refused(detail: str) -> HTTPException:
    """A 503 that asks the client to come back in a second and closes the connection."""
    return HTTPException(503, detail, headers=REFUSAL_HEADERS)


# --- the app ------------------------------------------------------------------------------------


class LockedBackend:
    """A backend that runs one model call at a time.

    Preprocessing (decode, ink, boxes) is pure and runs in parallel request threads; only the
    model call takes turns, so concurrent requests do not fight over the model's own threads.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name = backend.name
        self.lock = threading.Lock()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.backend.probabilities(images)


def create_app(
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    recognizer: Recognizer | None = None,
    cors_origins: tuple[str, ...] | list[str] = (),
    admin_token: str | None = None,
    feedback_db: str | os.PathLike | None = None,
    config: ServeConfig | None = None,
) -> FastAPI:
    """The API and drawing page for one model: a run directory, .safetensors or .onnx file
    (None: the bundled model), or an already loaded ``recognizer``. ``admin_token`` turns on
    `POST /api/model/reload`; ``feedback_db`` is where `POST /api/feedback` stores records;
    ``config`` sets the threads and the bounds (`ServeConfig`)."""
    config = config or ServeConfig()
    if recognizer is None:
        recognizer = Recognizer.load(model, backend=backend, threads=config.worker_threads())
    app = FastAPI(
        title="digitrec",
        summary="Read handwritten digits in images.",
        version=_version(),
        docs_url=None,  # served by add_docs from the package: the defaults load a CDN
        redoc_url=None,
        lifespan=warm_up_on_start,
    )
    app.state.config = config
    app.state.recognizer = Recognizer(LockedBackend(recognizer.backend), recognizer.card)
    # Decoding and preprocessing dominate a request. One thread per core, the rest queued in
    # order: a larger pool fights over the GIL and serves some requests far later than others.
    app.state.workers = ThreadPoolExecutor(config.worker_threads(), thread_name_prefix="recognize")
    app.state.queue = Gate(config.max_queue)
    app.state.turns = Gate(config.worker_threads(), config.max_queue)
    app.state.uploads = Gate(config.max_uploads, config.upload_queue)
    app.state.ready = False
    app.state.warm_up_error = None
    app.state.metrics = Metrics(recognizer.card, _backend(recognizer))
    app.add_exception_handler(RequestValidationError, one_line_validation_error)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: sees all
    add_recognize(app)
    add_status(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY}
        )

    from digitrec.feedback_api import add_feedback_api  # it builds on this module

    add_feedback_api(app, model, backend, admin_token, feedback_db)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def add_recognize(app: FastAPI) -> None:
    """POST /api/recognize: a request is refused at once when ``max_queue`` are already in."""

    @app.post(
        "/api/recognize",
        response_model=Recognition,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=RECOGNIZE_BODY,
        summary="Read the digits in an image",
    )
    async def recognize(
        request: Request,
        stages: bool = Query(False, description="also return each digit's 28x28 model input"),
    ) -> Recognition:
        """Send the image as a multipart field `file` or as the raw body with an image/* type.
        A blank image answers `"number": ""` and no digits."""
        state = request.app.state
        # Counted from before the body is read, so a full queue costs a refused client nothing.
        if not state.queue.try_enter():
            raise refused(f"the server is busy ({state.queue.slots} requests queued): retry")
        try:
            data, name = await read_image(request)
            result = await read_in_turn(request, data)
        finally:
            state.queue.leave()
        if result is None:  # nobody to answer
            raise HTTPException(CLIENT_LEFT, "the client left before its image was read")
        if result.error is not None:
            raise HTTPException(422, result.error)
        state.metrics.digits.inc(len(result.digits))
        answer = Recognition.model_validate({**result.to_dict(), "path": name})
        if stages:
            # Each result carries the 28x28 input the model saw.
            for reading, digit in zip(answer.digits, result.digits, strict=True):
                reading.image = png_data_url(digit.image)
        return answer


async def read_in_turn(request: Request, data: bytes) -> ImageResult | None:
    """`read_digits` on a worker thread once one is free, first come first served; None, and
    nothing read, when the client has left while it waited (it gave up, or timed out and will
    ask again), so work nobody waits for never delays those who do."""
    state = request.app.state
    await state.turns.enter()  # never refused: `queue` admits fewer than it holds
    try:
        if await request.is_disconnected():
            return None
        return await asyncio.get_running_loop().run_in_executor(
            state.workers, read_digits, state.recognizer, data, None
        )
    finally:
        state.turns.leave()


def add_status(app: FastAPI) -> None:
    """Liveness (/api/health), readiness (/api/ready), the model card and /metrics."""

    @app.get("/api/health", response_model=Health, summary="Is the server up, with which model")
    async def health(request: Request) -> Health:
        recognizer = request.app.state.recognizer
        return Health(status="ok", model=recognizer.card.model, backend=_backend(recognizer))

    @app.get(
        "/api/ready",
        response_model=Readiness,
        responses={503: {"model": Problem, "description": "not warmed up yet"}},
        summary="Has the model answered yet: send traffic here only once this is 200",
    )
    async def ready(request: Request) -> Readiness:
        state = request.app.state
        if not state.ready:
            why = state.warm_up_error or "the model has not answered its warm-up request yet"
            raise HTTPException(503, f"not ready: {why}", headers={"Retry-After": "1"})
        return Readiness(status="ready", model=state.recognizer.card.model)

    @app.get("/api/model", response_model=ModelCard, summary="The model card")
    async def model_card(request: Request) -> ModelCard:
        recognizer = request.app.state.recognizer
        card = recognizer.card.to_dict()
        metrics = card.get("metrics") or {}
        return ModelCard.model_validate(
            {
                **{key: card[key] for key in ModelCard.model_fields if card.get(key) is not None},
                "model": str(card.get("model", "?")),
                "backend": _backend(recognizer),
                "metrics": metrics,
                "test_accuracy": metrics.get("test_accuracy"),
            }
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        summary="Requests by route and status, latency, digits read, the model: for Prometheus",
    )
    async def metrics(request: Request) -> Response:
        body, media_type = request.app.state.metrics.exposition()
        return Response(body, media_type=media_type)


@asynccontextmanager
async def warm_up_on_start(app: FastAPI) -> AsyncIterator[None]:
    """Serve at once and warm up meanwhile: /api/health answers from the start, /api/ready only
    once the model has read an image."""
    task = asyncio.create_task(warm_up(app))
    try:
        yield
    finally:
        task.cancel()


async def warm_up(app: FastAPI) -> None:
    """Read a small drawn digit the way a request is read (decoder, preprocessing, model), so
    the first client does not pay for what loads lazily; then mark the app ready."""
    try:
        result = await asyncio.get_running_loop().run_in_executor(
            app.state.workers, read_digits, app.state.recognizer, warm_up_image(), None
        )
        error = result.error
    except Exception as failure:  # reported by /api/ready, which stays 503
        error = f"{type(failure).__name__}: {failure}"
    if error is not None:
        app.state.warm_up_error = f"the warm-up request failed ({error})"
        logger.error("digitrec: %s", app.state.warm_up_error)
        return
    app.state.ready = True


def warm_up_image() -> bytes:
    """A PNG of a drawn 1: dark ink on white, as the drawing page sends."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(image).line([(32, 12), (32, 52)], fill=0, width=6)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts served from the package, so both work
    offline and send nothing to a third party."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = "/static/docs"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
        )  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} API",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon-32x32.png", with_google_fonts=False,
        )  # fmt: skip


def read_digits(
    recognizer: Recognizer, data: bytes, pictures: dict[str, np.ndarray] | None
) -> ImageResult:
    """`recognizer.recognize(data)`, as the command line reads a file: formats outside
    `preprocess.FORMATS`, decompression bombs and progressive-JPEG scan bombs are refused from
    their headers before any pixel is decoded, large images are read under a deadline, and any
    decoder failure is this request's 422, never a 500."""
    return recognizer.recognize(data, pictures)


async def one_line_validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 for a bad query parameter, as one line like every other error here."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    first = problems[0] if problems else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "invalid request")
    return JSONResponse({"detail": f"{where}: {message}" if where else message}, status_code=422)


async def read_image(request: Request) -> tuple[bytes, str]:
    """The image bytes of a request and a name for them; HTTP errors for what is not one."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_form = media_type == "multipart/form-data"
    if not (is_form or media_type.startswith("image/") or media_type in RAW_TYPES):
        raise HTTPException(
            415,
            f"unsupported content type {media_type!r}: send an image/* body "
            "or a multipart/form-data field 'file'",
        )
    body = await read_body(request, MAX_REQUEST_BYTES)
    if not is_form:
        if not body:
            raise HTTPException(422, "empty request body: send an image")
        return body, "<body>"
    data, name, _ = await form_file(request, body)
    return data, name


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is, or claims to be, over ``limit`` bytes,
    with 408 unless all of it arrives within the app's ``body_timeout_s``, and with 503 while
    ``max_uploads`` bodies are arriving and ``upload_queue`` more wait for their turn.

    So a client that stalls mid-upload holds at most ``limit`` bytes for at most the deadline,
    and many of them hold at most ``max_uploads`` times that.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(400, "invalid Content-Length header", headers=CLOSE_HEADERS)
        if int(declared) > limit:
            raise HTTPException(413, _too_large_message(int(declared)), headers=CLOSE_HEADERS)
    state = request.app.state
    deadline = getattr(state, "config", ServeConfig()).body_timeout_s
    uploads: Gate | None = getattr(state, "uploads", None)
    if uploads is not None and not await uploads.enter():
        raise refused(
            f"the server is busy ({uploads.slots} uploads arriving, {uploads.waiting} waiting): "
            "retry"
        )
    try:
        async with asyncio.timeout(deadline):
            return await receive_body(request, limit)
    except TimeoutError:
        raise HTTPException(
            408, f"the request body did not arrive within {deadline:g} s", headers=CLOSE_HEADERS
        ) from None
    finally:
        if uploads is not None:
            uploads.leave()


async def receive_body(request: Request, limit: int) -> bytes:
    """The body as it arrives, refused with 413 once over ``limit`` bytes."""
    # The header may be missing (a chunked upload) or wrong, so count what actually arrives.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, _too_large_message(size, at_least=True), headers=CLOSE_HEADERS)
        chunks.append(chunk)
    return b"".join(chunks)


async def form_file(
    request: Request, body: bytes, fields: tuple[str, ...] = ()
) -> tuple[bytes, str, dict[str, str]]:
    """The field `file` of a multipart body already read into memory: (its bytes, its name,
    the text ``fields`` asked for, each required)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(
            max_files=1, max_fields=16, max_part_size=MAX_REQUEST_BYTES
        )
    except StarletteHTTPException as error:  # Starlette's message for a malformed form
        raise HTTPException(422, f"malformed multipart body ({error.detail})") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, "the multipart form has no file field named 'file'")
        texts = {name: form.get(name) for name in fields}
        for name, value in texts.items():
            if not isinstance(value, str):
                raise HTTPException(422, f"the multipart form has no text field named '{name}'")
        data = await upload.read()
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        return data, upload.filename or "<upload>", texts
    finally:
        await form.close()


def png_data_url(image: np.ndarray) -> str:
    """A (H, W) float image in [0, 1] as a data:image/png;base64 URL."""
    from PIL import Image

    pixels = np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- running it ---------------------------------------------------------------------------------


def run_server(
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    cors_origins: tuple[str, ...] | list[str] = (),
    admin_token: str | None = None,
    feedback_db: str | os.PathLike | None = None,
    config: ServeConfig | None = None,
) -> None:
    """Serve the API and the page until interrupted, in ``config.workers`` processes that each
    load the model (`app_from_environment`). On SIGTERM or Ctrl-C the server stops accepting
    and lets the requests in flight finish, for up to ``config.shutdown_timeout_s``."""
    import uvicorn

    from digitrec.recognize import resolve_model

    config = config or ServeConfig()
    resolve_model(model, backend)  # a wrong path: one line here, not a traceback per worker
    app_arguments = {
        "model": None if model is None else str(model),
        "backend": backend,
        "cors_origins": list(cors_origins),
        "admin_token": admin_token,
        "feedback_db": None if feedback_db is None else str(feedback_db),
    }
    settings = {"app": app_arguments, "config": dataclasses.asdict(config)}
    with tempfile.TemporaryDirectory(prefix="digitrec-metrics-") as metrics_dir:
        os.environ[SETTINGS_VARIABLE] = json.dumps(settings)
        if config.workers > 1:
            # Each worker writes its counts here and /metrics adds up every worker's, whichever
            # one answers. Set before any worker imports prometheus_client, which reads it then.
            os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
            os.environ[RELOAD_FILE_VARIABLE] = str(Path(metrics_dir) / "reload.json")
        factory = "digitrec.serve:app_from_environment"
        settings = {"host": host, "port": port, "log_level": "info", **uvicorn_settings(config)}
        if config.workers == 1:
            uvicorn.run(factory, factory=True, **settings)
        else:
            run_workers(uvicorn.Config(factory, factory=True, workers=config.workers, **settings))


def run_workers(config: Any) -> None:
    """uvicorn's supervisor of ``config.workers`` processes (restarts, signals, health checks),
    with a listening socket for each worker.

    uvicorn's own `workers=N` shares one socket, and the worker that wakes first accepts a
    whole burst of new connections: long-lived ones (a proxy's pool, a load test) all end up
    in one worker while the others idle. With a socket each, bound with SO_REUSEPORT, the
    kernel spreads connections evenly. A worker restarted after a crash listens on every socket.
    """
    from uvicorn.supervisors import Multiprocess
    from uvicorn.supervisors.multiprocess import Process

    class SocketPerWorker(Multiprocess):
        def init_processes(self) -> None:
            for sock in self.sockets:
                process = Process(self.config, [sock])
                process.start()
                self.processes.append(process)

    uvicorn_log = logging.getLogger("uvicorn.error")  # set up by uvicorn.Config
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # Without SO_REUSEPORT, so that it fails if any server, this one included, has the port:
    # two servers sharing it would each get half the connections.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError as error:
            uvicorn_log.error("cannot listen on %s:%d: %s", config.host, config.port, error)
            raise SystemExit(1) from None
    sockets = []
    for _ in range(config.workers):
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
        sockets.append(sock)
    uvicorn_log.info(
        "Uvicorn running on http://%s:%d, %d workers with a socket each (Press CTRL+C to quit)",
        config.host,
        config.port,
        config.workers,
    )
    try:
        SocketPerWorker(config, sockets=sockets).run()
    finally:
        for sock in sockets:
            sock.close()


def app_from_environment() -> FastAPI:
    """The app of one worker of `run_server`, from the settings it left in SETTINGS_VARIABLE."""
    import cv2

    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    config = ServeConfig(**settings["config"])
    # OpenCV's own pool would otherwise run on every core in every worker.
    cv2.setNumThreads(config.worker_threads())
    return create_app(**settings["app"], config=config)


def uvicorn_settings(config: ServeConfig) -> dict[str, Any]:
    """uvicorn's options for the bounds of ``config``."""
    return {
        "http": functools.partial(
            GuardedH11Protocol,
            header_timeout_s=config.header_timeout_s,
            max_connections=config.max_connections,
        ),
        # uvicorn counts the asking connection among the open ones, and in-flight requests too:
        # one over the sockets allowed, this catches only requests whose client has left.
        "limit_concurrency": config.max_connections + 1,
        "timeout_keep_alive": config.keep_alive_s,
        "timeout_graceful_shutdown": config.shutdown_timeout_s,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }


def _busy_response() -> bytes:
    text = b"too many connections: retry later"
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"retry-after: %d\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (RETRY_AFTER_S, len(text), text)
    )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection with the two bounds uvicorn lacks, and without Nagle.

    uvicorn arms its keep-alive timer only after a response and stops it at a request's first
    byte, so a client that connects and sends nothing, or sends its headers a byte a second,
    holds its socket for ever; and it checks `limit_concurrency` only once a request's headers
    are in, so idle sockets are never refused. Here a new connection has the keep-alive time to
    start a request and ``header_timeout_s`` from a request's first byte to finish its headers,
    and a socket past ``max_connections`` open ones is answered 503 and closed at once.
    """

    BUSY = _busy_response()

    def __init__(self, *args: Any, header_timeout_s: float, max_connections: int, **kw: Any):
        super().__init__(*args, **kw)
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio turns Nagle off only on sockets whose listener says IPPROTO_TCP, and the
            # one uvicorn binds for its workers says 0: every keep-alive answer after the first
            # would wait about 40 ms for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.connections) > self.max_connections:
            transport.write(self.BUSY)
            transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the request's headers are not all in yet
            if self.head_deadline is None and not self.transport.is_closing():
                self.head_deadline = self.loop.call_later(
                    self.header_timeout_s, self.transport.close
                )
        elif self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None
        super().connection_lost(exc)


# --- metrics ------------------------------------------------------------------------------------


class Metrics:
    """The app's Prometheus metrics: requests by route and status, their latency, digits read
    and the model serving.

    With PROMETHEUS_MULTIPROC_DIR set (`run_server` with several workers), each worker writes
    its values to files there, and /metrics adds up all of them, whichever worker answers.
    """

    def __init__(self, card: checkpoint.ModelCard, backend: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "digitrec_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "digitrec_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.digits = Counter(
            "digitrec_digits_read",
            "Digits read in images sent to /api/recognize",
            registry=self.registry,
        )
        self.model = Gauge(
            "digitrec_model_info",
            "1 for the model serving, 0 for one a reload replaced: name, backend, digest",
            ["model", "backend", "sha256"],
            multiprocess_mode="max",
            registry=self.registry,
        )
        self.serving = (card.model, backend, card.digest)
        self.model.labels(*self.serving).set(1)

    def set_model(self, card: checkpoint.ModelCard, backend: str) -> None:
        """The model serving is now ``card``'s (after a reload)."""
        # Set to 0, not removed: with several workers, values live in files that removing
        # from this process would not clear.
        self.model.labels(*self.serving).set(0)
        self.serving = (card.model, backend, card.digest)
        self.model.labels(*self.serving).set(1)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its media type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request, as plain ASGI: no task or body copy per request."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_noting_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The route's pattern, never the raw path: random paths must not add label values.
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.observe(route, status, time.perf_counter() - began)


# --- a server in a thread -----------------------------------------------------------------------


class RunningServer(NamedTuple):
    """``base_url, stop = serve_in_thread(app)``, or ``with serve_in_thread(app) as server:``."""

    base_url: str
    stop: Any  # () -> None

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
) -> RunningServer:
    """Start uvicorn on ``host:port`` (0: a free port) in a background thread, with the bounds
    of the app's `ServeConfig`; return its URL and a function that stops it gracefully (requests
    in flight finish) and waits for the thread."""
    import uvicorn

    # Bind here, so that port 0 gets a free port and its number is known before uvicorn starts.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    settings = uvicorn_settings(getattr(app.state, "config", ServeConfig()))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server on {host}:{bound_port} did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout)
        sock.close()

    url_host = f"[{host}]" if ":" in host else host
    return RunningServer(f"http://{url_host}:{bound_port}", stop)


def _backend(recognizer: Recognizer) -> str:
    return str(getattr(recognizer.backend, "name", "?"))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("digitrec")
    except PackageNotFoundError:
        return "0"


def _too_large_message(size: int, at_least: bool = False) -> str:
    more = "over " if at_least else ""
    return (
        f"request body too large ({more}{size / 2**20:.1f} MiB, "
        f"limit {MAX_REQUEST_BYTES // 2**20} MiB)"
    )
