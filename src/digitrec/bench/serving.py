"""Load tests of `digitrec serve`: the images it is asked to read, two clients that post them
(wrk when it is installed, else one of our own on asyncio and httpx) and `digitrec bench serve`,
which starts the server as a process of its own with 1 and N workers and loads it with each
image at several numbers of connections. Everything runs on loopback.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

MAX_LOAD_REQUESTS = 100_000
MAX_LOAD_CONCURRENCY = 256
ANSWER_TIMEOUT_S = 30.0  # a request not answered by then counts as an error
START_TIMEOUT_S = 120.0  # for a server process to load its model and warm up on busy cores
# wrk posts the file named by $DIGITREC_BODY; an answer is wrong unless it is a 200 holding
# $DIGITREC_EXPECT. Each wrk thread runs its own copy of the script, so `done` adds up theirs.
WRK_SCRIPT = r"""
local file = assert(io.open(os.getenv("DIGITREC_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("DIGITREC_TYPE")
local expected = os.getenv("DIGITREC_EXPECT")
local threads = {}
wrong = 0

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, expected, 1, true) then
    wrong = wrong + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("wrong")
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "microseconds": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "wrong": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, total))
end
"""


class ServerProcess(NamedTuple):
    base_url: str
    process: subprocess.Popen


class BenchImage(NamedTuple):
    name: str
    data: bytes
    content_type: str
    expected: str  # the number it reads as


# --- the images -------------------------------------------------------------------------------


def bench_images(digits: np.ndarray, labels: Sequence[int]) -> list[BenchImage]:
    """What `bench serve` posts, made from MNIST test digits (N, 28, 28) white on black: a
    drawing as a large canvas sends it, a small scan, and a 12-megapixel phone photo."""
    from digitrec import synth

    first, second = (int(label) for label in labels[:2])
    canvas, _, _ = synth.render("canvas", [digits[0]], np.random.default_rng(0), labels=[first])
    return [
        BenchImage("canvas PNG", canvas, "image/png", str(first)),
        BenchImage("scan PNG", scan_png(digits[:2]), "image/png", f"{first}{second}"),
        BenchImage("12 MP JPEG", phone_jpeg(digits[0]), "image/jpeg", str(first)),
    ]


def scan_png(digits: np.ndarray) -> bytes:
    """Digits side by side, dark on slightly grainy grey paper, 3x enlarged: a flatbed scan."""
    import cv2

    row = np.concatenate([np.pad(digit, 10) for digit in digits], axis=1).astype(np.float32)
    row = cv2.resize(row / 255.0, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)
    paper = 0.93 + np.random.default_rng(1).normal(0.0, 0.015, row.shape)
    return _encode(paper * (1.0 - 0.85 * row), "PNG")


def phone_jpeg(digit: np.ndarray, width: int = 4000, height: int = 3000) -> bytes:
    """One digit written large on paper, photographed: 12 megapixels under uneven light, with
    sensor noise and a warm cast, as a JPEG of a few MB."""
    import cv2

    side = height * 11 // 30
    ink = np.zeros((height, width), np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    ink[top : top + side, left : left + side] = np.clip(
        cv2.resize(digit.astype(np.float32) / 255.0, (side, side), interpolation=cv2.INTER_CUBIC),
        0.0,
        1.0,
    )
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.9 - 0.25 * (((x - 0.45 * width) / width) ** 2 + ((y - 0.55 * height) / height) ** 2)
    noise = np.random.default_rng(2).normal(0.0, 0.02, (height, width)).astype(np.float32)
    gray = light * (1.0 - 0.8 * ink) + noise
    return _encode(gray[:, :, None] * np.array([1.0, 0.97, 0.9], np.float32), "JPEG")


def _encode(picture: np.ndarray, format: str) -> bytes:
    from PIL import Image

    pixels = np.clip(picture * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format, **({"quality": 88} if format == "JPEG" else {}))
    return buffer.getvalue()


# --- the clients ------------------------------------------------------------------------------


def load_test(
    base_url: str,
    image: bytes,
    requests: int = 5000,
    concurrency: int = 16,
    expected: str | None = None,
    seconds: float | None = None,
    content_type: str | None = None,
) -> dict[str, Any]:
    """POST ``image`` to ``/api/recognize`` ``requests`` times (or for ``seconds``, whichever
    ends first), ``concurrency`` at a time, with this process's own asyncio client.

    Returns requests, concurrency, seconds, requests_per_second, p50_ms, p99_ms and errors: any
    answer but 200, a 200 whose number is not ``expected`` (when given), or no answer within
    30 s. Bounded: at most 100,000 requests, 256 at a time.
    """
    if not 1 <= requests <= MAX_LOAD_REQUESTS:
        raise ValueError(f"requests must be 1..{MAX_LOAD_REQUESTS}, got {requests}")
    if not 1 <= concurrency <= MAX_LOAD_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_LOAD_CONCURRENCY}, got {concurrency}")
    if content_type is None:
        content_type = "image/png" if image.startswith(b"\x89PNG") else "application/octet-stream"
    ends = None if seconds is None else time.perf_counter() + seconds
    latencies, errors, took = asyncio.run(
        _post_many(
            base_url, image, content_type, requests, min(concurrency, requests), expected, ends
        )
    )
    return _summary(len(latencies), concurrency, took, latencies, errors)


async def _post_many(
    base_url: str,
    image: bytes,
    content_type: str,
    requests: int,
    concurrency: int,
    expected: str | None,
    ends: float | None,
) -> tuple[list[float], int, float]:
    import httpx

    url = base_url.rstrip("/") + "/api/recognize"
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, remaining
        while remaining > 0 and (ends is None or time.perf_counter() < ends):
            remaining -= 1  # one event loop: no other worker runs between test and decrement
            began = time.perf_counter()
            try:
                response = await client.post(
                    url, content=image, headers={"Content-Type": content_type}
                )
                ok = response.status_code == 200
                if ok and expected is not None:
                    ok = response.json().get("number") == expected
            except (httpx.HTTPError, ValueError):  # no answer, or an answer that is not JSON
                ok = False
            latencies.append(time.perf_counter() - began)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=ANSWER_TIMEOUT_S) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - began


def wrk_load(
    wrk: str, base_url: str, image: BenchImage, connections: int, seconds: float
) -> dict[str, Any]:
    """Load ``/api/recognize`` with wrk for ``seconds`` (whole seconds, at least 1) over
    ``connections`` connections; the same summary as `load_test`."""
    with tempfile.TemporaryDirectory(prefix="digitrec-wrk-") as folder:
        body, script = Path(folder) / "body", Path(folder) / "post.lua"
        body.write_bytes(image.data)
        script.write_text(WRK_SCRIPT)
        environment = {
            **os.environ,
            "DIGITREC_BODY": str(body),
            "DIGITREC_TYPE": image.content_type,
            "DIGITREC_EXPECT": f'"number":"{image.expected}"',
        }
        duration = max(1, round(seconds))
        command = [
            wrk,
            "--threads",
            "1",
            "--connections",
            str(connections),
            "--duration",
            f"{duration}s",
            "--timeout",
            f"{ANSWER_TIMEOUT_S:g}s",
            "--script",
            str(script),
            base_url.rstrip("/") + "/api/recognize",
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, env=environment, timeout=duration + 60
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {(done.stderr or done.stdout).strip()[:300]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    count = result["requests"]
    return {
        "requests": count,
        "concurrency": connections,
        "seconds": round(result["microseconds"] / 1e6, 3),
        "requests_per_second": round(count / max(result["microseconds"] / 1e6, 1e-9), 1),
        "p50_ms": round(result["p50_us"] / 1000.0, 2),
        "p99_ms": round(result["p99_us"] / 1000.0, 2),
        "errors": result["socket_errors"] + result["wrong"],
    }


def _summary(
    count: int, concurrency: int, seconds: float, latencies: list[float], errors: int
) -> dict[str, Any]:
    milliseconds = np.asarray(latencies or [0.0]) * 1000.0
    return {
        "requests": count,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "requests_per_second": round(count / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
        "errors": errors,
    }


# --- the server as a process, and the benchmark -----------------------------------------------


@contextmanager
def server_process(
    workers: int = 1, model: str | os.PathLike | None = None, backend: str = "auto"
) -> Iterator[ServerProcess]:
    """`digitrec serve --workers N` on a free loopback port, as a process of its own; yields
    its URL and process once it is ready, and stops it with SIGTERM."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "digitrec",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend",
        backend,
    ]
    if model is not None:
        command += ["--model", str(model)]
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(base_url, process, workers, log)
            yield ServerProcess(base_url, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(base_url: str, process: subprocess.Popen, workers: int, log: Any) -> None:
    """Until /api/ready has answered 200 on several fresh connections in a row: the kernel
    hands each to any worker, so every worker has most likely warmed up by then."""
    deadline = time.monotonic() + START_TIMEOUT_S
    in_a_row = 0
    while in_a_row < 4 * workers:
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            last = log.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the server did not become ready: {' | '.join(last)}")
        try:
            with urllib.request.urlopen(base_url + "/api/ready", timeout=5) as answer:
                in_a_row = in_a_row + 1 if answer.status == 200 else 0
        except (urllib.error.URLError, OSError):
            in_a_row = 0
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(base_url: str, image: BenchImage) -> None:
    """One answered POST of ``image``, asked again while the server is busy. The server reads
    in order of arrival, so once it answers, whatever a run left queued is done (or dropped:
    its client has gone) and the next run starts on an idle server."""
    request = urllib.request.Request(
        base_url + "/api/recognize", data=image.data, headers={"Content-Type": image.content_type}
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as answer:
                answer.read()
                return
        except urllib.error.HTTPError as error:
            if error.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=ANSWER_TIMEOUT_S) as answer:
        return json.loads(answer.read())


def bench_serve(
    images: Sequence[BenchImage],
    workers: Sequence[int] = (1, 2),
    connections: Sequence[int] = (1, 16, 64),
    seconds: float = 3.0,
    requests: int = MAX_LOAD_REQUESTS,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    use_wrk: bool = True,
) -> dict[str, Any]:
    """`digitrec bench serve`: for each number of workers, a server process; for each image
    and number of connections, a run of ``seconds`` (the built-in client also stops after
    ``requests``). wrk drives the runs when installed (and ``use_wrk``): a client in C spends
    far less of the shared cores than one in Python would.
    """
    import platform
    from datetime import UTC, datetime

    from digitrec.config import available_cores

    wrk = shutil.which("wrk") if use_wrk else None
    runs = []
    for count in workers:
        with server_process(count, model, backend) as (base_url, _):
            health = _get_json(base_url + "/api/health")
            for image in images:
                for clients in connections:
                    _post(base_url, image)  # also loads the decoder of a new kind of file
                    if wrk:
                        run = wrk_load(wrk, base_url, image, clients, seconds)
                    else:
                        run = load_test(
                            base_url,
                            image.data,
                            requests,
                            clients,
                            image.expected,
                            seconds,
                            image.content_type,
                        )
                    runs.append({"image": image.name, "workers": count, **run})
    return {
        "client": f"wrk ({wrk})" if wrk else "built-in (asyncio + httpx)",
        "model": str(model) if model else "bundled",
        "model_name": health["model"],
        "backend": health["backend"],
        "images": [
            {"name": image.name, "bytes": len(image.data), "expected": image.expected}
            for image in images
        ],
        "machine": {
            "platform": platform.platform(),
            "cores": available_cores(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "runs": runs,
    }


def load_table(report: dict[str, Any]) -> str:
    """The `bench serve` report as a table, one row per run."""
    sizes = ", ".join(f"{image['name']} {image['bytes']:,d} bytes" for image in report["images"])
    lines = [
        f"client: {report['client']}; model: {report['model']} ({report['model_name']}, "
        f"{report['backend']}); {report['machine']['cores']} cores, loopback",
        f"images: {sizes}",
        f"{'image':<12} {'workers':>7} {'conns':>5} {'requests':>8} {'req/s':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6}",
    ]
    for run in report["runs"]:
        lines.append(
            f"{run['image']:<12} {run['workers']:>7} {run['concurrency']:>5} "
            f"{run['requests']:>8} {run['requests_per_second']:>7.1f} {run['p50_ms']:>8.1f} "
            f"{run['p99_ms']:>8.1f} {run['errors']:>6}"
        )
    return "\n".join(lines)
