"""The feedback and model-reload endpoints of `digitrec serve`, as a router `create_app` includes.

`POST /api/feedback` stores an image with its right text (`digitrec.feedback`), read by the
model now serving so the record holds the crops it saw. `POST /api/model/reload` swaps the model
for a checked new one without a restart; it is off unless the server has an admin token, and
needs it as a Bearer token. Requests already reading finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digitrec import feedback
from digitrec.checkpoint import ModelError, write_json
from digitrec.preprocess import ImageError
from digitrec.recognize import Recognizer
from digitrec.serve import (
    MAX_REQUEST_BYTES,
    RELOAD_FILE_VARIABLE,
    LockedBackend,
    Problem,
    form_file,
    multipart_body,
    read_body,
    read_digits,
    refused,
)


class FeedbackSaved(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: int = Field(description="the record's id in the feedback store")
    label: str = Field(description="the right text, as stored")
    answer: str = Field(description="what the model read")
    usable: bool = Field(description="whether a fine-tune can pair its digits with the crops")
    reason: str = Field(description='why it is not usable; "" when it is')
    weights_sha256: str = Field(description="digest of the weights of the model that read it")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        None,
        description="run directory, .safetensors or .onnx file on the server; "
        "default: the model the server was started with",
    )


class ReloadResult(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(description="registered model name")
    backend: str
    weights_sha256: str = Field(description="digest of the weights now serving")


FEEDBACK_BODY = multipart_body(
    {"label": {"type": "string", "description": "the right text, e.g. 42"}}
)
RELOAD_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": ReloadRequest.model_json_schema()}},
    }
}
FEEDBACK_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": Problem, "description": f"body over {MAX_REQUEST_BYTES // 2**20} MiB"},
    415: {"model": Problem, "description": "not multipart/form-data"},
    422: {"model": Problem, "description": "a bad label, or not a readable image"},
    503: {"model": Problem, "description": "the feedback store cannot be opened"},
}
RELOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no or wrong Bearer token"},
    404: {"model": Problem, "description": "reload is off (no --admin-token)"},
    422: {"model": Problem, "description": "the model was refused; the old one keeps serving"},
}


class LazyStore:
    """The feedback store, opened on first use: a server that never gets feedback never
    creates one."""

    def __init__(self, location: str | os.PathLike | None) -> None:
        self.location = location
        self.store: feedback.FeedbackStore | None = None
        self.lock = threading.Lock()

    def get(self) -> feedback.FeedbackStore:
        with self.lock:
            if self.store is None:
                self.store = feedback.open_store(self.location)
            return self.store


def add_feedback_api(
    app: FastAPI,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    admin_token: str | None = None,
    feedback_db: str | os.PathLike | None = None,
) -> None:
    """The endpoints, for an app whose `state` has `recognizer` and `workers` (`create_app`).

    ``model`` and ``backend`` are what a reload with no body loads again; ``admin_token`` turns
    reloading on; ``feedback_db`` is the store (default: $DIGITREC_FEEDBACK_DB or the file
    under $XDG_DATA_HOME/digitrec). With $DIGITREC_RELOAD_FILE set (several workers), a reload
    in one worker reaches them all.
    """
    swap = ModelSwap(model, backend, os.environ.get(RELOAD_FILE_VARIABLE))
    router = APIRouter()
    add_feedback_route(router, LazyStore(feedback_db))
    add_reload_route(router, swap, admin_token)
    app.include_router(router)
    if swap.shared is not None:
        app.add_middleware(FollowReloads, swap=swap)


def add_feedback_route(router: APIRouter, store: LazyStore) -> None:
    @router.post(
        "/api/feedback",
        status_code=201,
        response_model=FeedbackSaved,
        responses=FEEDBACK_ERRORS,
        openapi_extra=FEEDBACK_BODY,
        summary="Store an image with the right text",
    )
    async def add_feedback(request: Request) -> FeedbackSaved:
        """Send the image as a multipart field `file` and its right text as the field `label`
        (digits and . , - / : or line breaks, at most 32 characters). The model now serving
        reads it again, so the record keeps the crops it saw."""
        state = request.app.state
        # The same bound as /api/recognize: feedback is read by the same workers.
        queue = getattr(state, "queue", None)
        if queue is not None and not queue.try_enter():
            raise refused(f"the server is busy ({queue.slots} requests queued): retry")
        try:
            data, label = await read_feedback_form(request)
            try:
                label = feedback.check_label(label)
            except feedback.FeedbackError as error:
                raise HTTPException(422, str(error)) from None
            saved = await asyncio.get_running_loop().run_in_executor(
                state.workers, store_feedback, store, state.recognizer, data, label
            )
        finally:
            if queue is not None:
                queue.leave()
        return FeedbackSaved.model_validate(saved)


class ModelSwap:
    """Loads a model and puts it in place of the one serving, one swap at a time; with a
    ``shared`` file (several workers), tells the other workers and follows what they load."""

    def __init__(
        self, model: str | os.PathLike | None, backend: str, shared: str | None = None
    ) -> None:
        self.model = model
        self.backend = backend
        self.lock = threading.Lock()
        self.shared = Path(shared) if shared else None
        self.seen = self.stamp()

    def __call__(self, app: Any, wanted: ReloadRequest) -> Recognizer:
        with self.lock:
            model = wanted.model or self.model
            loaded = self.load(app, model)
            if self.shared is not None:
                write_json(self.shared, {"model": None if model is None else str(model)})
                self.seen = self.stamp()
        return loaded

    def load(self, app: Any, model: str | os.PathLike | None) -> Recognizer:
        config = getattr(app.state, "config", None)
        # The threads `create_app` gives the model, so a reload changes nothing else.
        threads = config.worker_threads() if config is not None else None
        loaded = Recognizer.load(model, self.backend, threads=threads)
        # One assignment: a request reads app.state.recognizer once, so it finishes on
        # whichever model it found.
        app.state.recognizer = Recognizer(LockedBackend(loaded.backend), loaded.card)
        metrics = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.set_model(loaded.card, str(getattr(loaded.backend, "name", "?")))
        return loaded

    def stamp(self) -> tuple[int, int] | None:
        """When and as which file the shared file was last written (None: never)."""
        try:
            status = self.shared.stat() if self.shared is not None else None
        except OSError:
            return None
        return None if status is None else (status.st_mtime_ns, status.st_ino)

    def behind(self) -> bool:
        """Has another worker loaded a model since this one last looked? (One stat.)"""
        return self.shared is not None and self.stamp() != self.seen

    def follow(self, app: Any) -> None:
        """Load what another worker loaded; a model that fails here keeps the old one."""
        with self.lock:
            stamp = self.stamp()
            if stamp == self.seen:
                return
            self.seen = stamp
            try:
                wanted = json.loads(self.shared.read_text())["model"]
                self.load(app, wanted)
            except (OSError, ValueError, KeyError, TypeError, ModelError, ImageError) as error:
                logging.getLogger("uvicorn.error").error("model not followed: %s", error)


class FollowReloads:
    """Before each request, loads the model another worker has reloaded, if any (ASGI)."""

    def __init__(self, app: Any, swap: ModelSwap) -> None:
        self.app = app
        self.swap = swap

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.swap.behind():
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.swap.follow, scope["app"])
        await self.app(scope, receive, send)


def add_reload_route(router: APIRouter, swap: ModelSwap, admin_token: str | None) -> None:
    @router.post(
        "/api/model/reload",
        response_model=ReloadResult,
        responses=RELOAD_ERRORS,
        openapi_extra=RELOAD_BODY,
        summary="Load a model again, or another one, without a restart (admin)",
    )
    async def reload_model(request: Request) -> ReloadResult:
        """Needs `Authorization: Bearer TOKEN` with the server's `--admin-token`. Loads the
        model named in the JSON body (or the server's own again) and checks it as every load
        does; only then does it replace the model serving. A refused model leaves the old one
        serving and answers 422 with the reason. With several worker processes, the others
        load the same model before their next answer."""
        check_admin(request, admin_token)
        wanted = await read_reload_request(request)
        try:
            # Not on the request workers: loading must not hold up reading.
            loaded = await asyncio.get_running_loop().run_in_executor(
                None, swap, request.app, wanted
            )
        except (ModelError, ImageError, OSError) as error:
            raise HTTPException(
                422, f"model not loaded, the old one still serves: {error}"
            ) from None
        return ReloadResult(
            model=loaded.card.model,
            backend=str(getattr(loaded.backend, "name", "?")),
            weights_sha256=feedback.weights_digest(loaded.card),
        )


def store_feedback(
    store: LazyStore, recognizer: Recognizer, data: bytes, label: str
) -> dict[str, Any]:
    """Read ``data`` and store the record (in a worker thread); HTTP errors for what fails."""
    result = read_digits(recognizer, data, None)
    if result.error is not None:
        raise HTTPException(422, result.error)
    try:
        opened = store.get()
    except feedback.FeedbackError as error:
        raise HTTPException(503, str(error)) from None
    try:
        saved = opened.add(data, label, result, feedback.weights_digest(recognizer.card))
    except (feedback.FeedbackError, ImageError) as error:
        raise HTTPException(422, str(error)) from None
    return {
        "id": saved.id,
        "label": saved.label,
        "answer": saved.answer,
        "usable": saved.usable,
        "reason": saved.reason,
        "weights_sha256": saved.weights_sha256,
    }


async def read_feedback_form(request: Request) -> tuple[bytes, str]:
    """(image bytes, label) of a multipart request; HTTP errors for anything else."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise HTTPException(
            415, "send multipart/form-data with a field 'file' (the image) and a field 'label'"
        )
    body = await read_body(request, MAX_REQUEST_BYTES)
    data, _, texts = await form_file(request, body, fields=("label",))
    return data, texts["label"]


def check_admin(request: Request, admin_token: str | None) -> None:
    """404 when reloading is off, 401 unless the request carries the admin Bearer token."""
    if not admin_token:
        raise HTTPException(404, "model reload is off: start the server with --admin-token")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), admin_token.encode()
    ):
        raise HTTPException(
            401, "needs Authorization: Bearer <admin token>", headers={"WWW-Authenticate": "Bearer"}
        )


async def read_reload_request(request: Request) -> ReloadRequest:
    body = await read_body(request, MAX_REQUEST_BYTES)
    if not body.strip():
        return ReloadRequest()
    try:
        return ReloadRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise HTTPException(422, f"{where}: {first['msg']}" if where else first["msg"]) from None
