"""The REST API and the drawing page: `digitrec serve`.

`create_app` builds a FastAPI app around one `Recognizer`, loaded once and kept on `app.state`.
`POST /api/recognize` takes an image (a multipart field `file` or the raw body) and answers the
JSON of `digitrec recognize --json`; `GET /` is a page to draw digits on, read live as you draw.
Requests are read in a pool of one worker thread per core, first come first served, and take
turns on the model, so the event loop never waits for decoding or inference. `serve_in_thread`
and `load_test` start a server on a free port and measure it, for the tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitrec.config import available_cores
from digitrec.recognize import ImageResult, Recognizer

STATIC_DIR = Path(__file__).parent / "static"
# A drawing or a phone photo is well under this; the decoder's own limit is higher, but a web
# request has no business being larger.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
RAW_TYPES = ("application/octet-stream", "")  # besides image/*; "" is a body with no type
# A decompression bomb: a small file that decodes to a huge picture (a 160 KB solid PNG of
# 7000x7000 pixels takes 1 GB and a second to read). Past a large photo's pixel count, a request
# must send at least one byte per BOMB_PIXELS_PER_BYTE pixels. A blank 2000x1300 canvas is 200
# pixels per byte, a phone photo under 10.
BOMB_MIN_PIXELS = 16_000_000
BOMB_PIXELS_PER_BYTE = 200
# The drawing page loads only its own files and shows the model's inputs as data: URLs.
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"


# --- schemas ------------------------------------------------------------------------------------


class DigitReading(BaseModel):
    digit: int = Field(ge=0, le=9, description="the digit read")
    confidence: float = Field(description="calibrated probability of that digit, 0..1")
    probabilities: list[float] = Field(description="probability of each class 0..9")
    box: list[int] = Field(description="x, y, width, height in the image's pixels")
    uncertain: bool = Field(description="confidence below the threshold where errors are common")
    image: str | None = Field(
        None,
        description="with ?stages=1 only: the 28x28 image the model saw (white on black), "
        "as a data:image/png;base64 URL",
    )


class Recognition(BaseModel):
    path: str = Field(description="the uploaded file's name, or <body> for a raw body")
    number: str = Field(description='the digits left to right; "" when no digit was found')
    digits: list[DigitReading]


class Problem(BaseModel):
    detail: str = Field(description="one line saying what was wrong with the request")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    backend: str


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
    413: {"model": Problem, "description": f"body over {MAX_REQUEST_BYTES // 2**20} MiB"},
    415: {"model": Problem, "description": "neither image/* nor multipart/form-data"},
    422: {"model": Problem, "description": "not a readable image (empty, corrupt, too large)"},
}
# The body is read by hand (to enforce the size limit while reading), so describe it here.
RECOGNIZE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


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
) -> FastAPI:
    """The API and drawing page for one model: a run directory, .safetensors or .onnx file
    (None: the bundled model), or an already loaded ``recognizer``."""
    if recognizer is None:
        recognizer = Recognizer.load(model, backend=backend)
    app = FastAPI(
        title="digitrec",
        summary="Read handwritten digits in images.",
        version=_version(),
    )
    app.state.recognizer = Recognizer(LockedBackend(recognizer.backend), recognizer.card)
    # Decoding and preprocessing (~10 ms of CPU for a canvas) dominate a request. One worker per
    # core, the rest queued in order, beat Starlette's 40-thread pool on 2 cores (`bench serve
    # --requests 1500`, 64 clients: 83 vs 76 requests/s, p99 0.9 s instead of 3.7 s): the 40
    # threads fought over the GIL and served some requests far later than others.
    app.state.workers = ThreadPoolExecutor(available_cores(), thread_name_prefix="recognize")
    app.add_exception_handler(RequestValidationError, one_line_validation_error)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )

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
        data, name = await read_image(request)
        pictures: dict[str, np.ndarray] | None = {} if stages else None
        result = await asyncio.get_running_loop().run_in_executor(
            request.app.state.workers, read_digits, request.app.state.recognizer, data, pictures
        )
        if result.error is not None:
            raise HTTPException(422, result.error)
        answer = Recognition.model_validate({**result.to_dict(), "path": name})
        if pictures is not None:
            for index, digit in enumerate(answer.digits):
                digit.image = png_data_url(pictures[f"4-digit-{index}"])
        return answer

    @app.get("/api/health", response_model=Health, summary="Is the server up, with which model")
    async def health(request: Request) -> Health:
        recognizer = request.app.state.recognizer
        return Health(
            status="ok", model=str(recognizer.card.get("model", "?")), backend=_backend(recognizer)
        )

    @app.get("/api/model", response_model=ModelCard, summary="The model card")
    async def model_card(request: Request) -> ModelCard:
        recognizer = request.app.state.recognizer
        card = recognizer.card
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

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_POLICY}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def read_digits(
    recognizer: Recognizer, data: bytes, pictures: dict[str, np.ndarray] | None
) -> ImageResult:
    """`recognizer.recognize(data)`, with decompression bombs refused before they are decoded."""
    bomb = decompression_bomb(data)
    if bomb is not None:
        return ImageResult(path="<body>", error=bomb)
    return recognizer.recognize(data, pictures)


def decompression_bomb(data: bytes) -> str | None:
    """Why ``data`` would decode to far more pixels than its size warrants; None if it would not.

    Reads the image header only. Files Pillow cannot open are left to the decoder to explain.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the decoder refuses it
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Exception:
        return None
    pixels = width * height
    if pixels > BOMB_MIN_PIXELS and pixels > BOMB_PIXELS_PER_BYTE * len(data):
        return (
            f"decompression bomb: {width}x{height} pixels from {len(data):,d} bytes "
            f"(over {BOMB_PIXELS_PER_BYTE} pixels per byte past "
            f"{BOMB_MIN_PIXELS // 1_000_000} megapixels)"
        )
    return None


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
    return await form_file(request, body)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is, or claims to be, over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPException(413, _too_large_message(int(declared)))
    # The header may be missing (a chunked upload) or wrong, so count what actually arrives.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, _too_large_message(size, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


async def form_file(request: Request, body: bytes) -> tuple[bytes, str]:
    """The field `file` of a multipart body already read into memory."""

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
        data = await upload.read()
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        return data, upload.filename or "<upload>"
    finally:
        await form.close()


def png_data_url(image: np.ndarray) -> str:
    """A (H, W) float image in [0, 1] as a data:image/png;base64 URL."""
    from PIL import Image

    pixels = np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def run_server(
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    cors_origins: tuple[str, ...] | list[str] = (),
) -> None:
    """Load the model, then serve the API and the page until interrupted."""
    import uvicorn

    app = create_app(model=model, backend=backend, cors_origins=cors_origins)
    uvicorn.run(app, host=host, port=port, log_level="info")


# --- a server in a thread, and a load test against it -------------------------------------------


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
    """Start uvicorn on ``host:port`` (0: a free port) in a background thread; return its URL
    and a function that stops it and waits for the thread."""
    import uvicorn

    # Bind here, so that port 0 gets a free port and its number is known before uvicorn starts.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
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


MAX_LOAD_REQUESTS = 100_000
MAX_LOAD_CONCURRENCY = 256


def load_test(
    base_url: str,
    image: bytes,
    requests: int = 5000,
    concurrency: int = 16,
    expected: str | None = None,
) -> dict[str, Any]:
    """POST ``image`` to ``/api/recognize`` ``requests`` times, ``concurrency`` at a time.

    Returns requests, concurrency, seconds, requests_per_second, p50_ms, p99_ms and errors: any
    answer but 200, a 200 whose number is not ``expected`` (when given), or no answer within
    30 s. Bounded: at most 100,000 requests, 256 at a time.
    """
    if not 1 <= requests <= MAX_LOAD_REQUESTS:
        raise ValueError(f"requests must be 1..{MAX_LOAD_REQUESTS}, got {requests}")
    if not 1 <= concurrency <= MAX_LOAD_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_LOAD_CONCURRENCY}, got {concurrency}")
    return asyncio.run(_load_test(base_url, image, requests, min(concurrency, requests), expected))


async def _load_test(
    base_url: str, image: bytes, requests: int, concurrency: int, expected: str | None
) -> dict:
    import httpx

    url = base_url.rstrip("/") + "/api/recognize"
    headers = {
        "Content-Type": "image/png" if image.startswith(b"\x89PNG") else "application/octet-stream"
    }
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, remaining
        while remaining > 0:
            remaining -= 1  # one event loop: no other worker runs between test and decrement
            began = time.perf_counter()
            try:
                response = await client.post(url, content=image, headers=headers)
                ok = response.status_code == 200
                if ok and expected is not None:
                    ok = response.json().get("number") == expected
            except (httpx.HTTPError, ValueError):  # no answer, or an answer that is not JSON
                ok = False
            latencies.append(time.perf_counter() - began)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    milliseconds = np.asarray(latencies) * 1000.0
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "requests_per_second": round(requests / seconds, 1),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
        "errors": errors,
    }


def bench_serve(
    image: bytes,
    expected: str,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    requests: int = 5000,
    concurrency: tuple[int, ...] | list[int] = (16, 64),
) -> dict[str, Any]:
    """`digitrec bench serve`: the server in a thread on loopback, loaded by `load_test` with
    ``requests`` POSTs of ``image`` (which reads ``expected``) at each concurrency in turn.

    Client and server share this process and its cores, as a client on the same machine would.
    """
    import platform
    from datetime import UTC, datetime

    app = create_app(model=model, backend=backend)
    recognizer = app.state.recognizer
    runs = []
    with serve_in_thread(app) as server:
        load_test(server.base_url, image, min(requests, 50), 4, expected)  # warm up
        for clients in concurrency:
            runs.append(load_test(server.base_url, image, requests, clients, expected))
    return {
        "model": recognizer.card.get("command") or (str(model) if model else "bundled"),
        "backend": _backend(recognizer),
        "image_bytes": len(image),
        "expected": expected,
        "machine": {
            "platform": platform.platform(),
            "cores": available_cores(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "runs": runs,
    }


def load_table(report: dict[str, Any]) -> str:
    """The `bench serve` report as a table, one row per concurrency."""
    lines = [
        f"model: {report['model']} ({report['backend']}), {report['image_bytes']:,d}-byte PNG "
        f"reading {report['expected']!r}, {report['machine']['cores']} cores, loopback",
        f"{'clients':>7} {'requests':>8} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6}",
    ]
    for run in report["runs"]:
        lines.append(
            f"{run['concurrency']:>7} {run['requests']:>8} {run['requests_per_second']:>10.1f} "
            f"{run['p50_ms']:>8.1f} {run['p99_ms']:>8.1f} {run['errors']:>6}"
        )
    return "\n".join(lines)


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
