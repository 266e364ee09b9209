"""A live server (uvicorn in a thread on 127.0.0.1) under abuse: the queue bound, the body and
header deadlines, idle sockets, the connection cap, stalled uploads and their memory, graceful
shutdown, and `digitrec serve --workers 2`. Each test sets its bounds small, so it takes a second
or a few; raw sockets play the clients that misbehave."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from digitrec.bench import serving as loadtest
from digitrec.recognize import Recognizer
from digitrec.serve import Gate, RunningServer, ServeConfig, create_app, serve_in_thread

CANVAS = Path(__file__).resolve().parents[1] / "examples" / "04-canvas-3.png"  # reads "3"
HEALTH = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class HeldBackend:
    """The real model, whose calls wait while a test holds it; ``entered`` is set when a call
    starts."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def hold(self) -> None:
        self.entered.clear()
        self.open.clear()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.open.wait(30), "held for 30 s"
        return self.backend.probabilities(images)


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()  # the bundled model


@pytest.fixture(scope="module")
def canvas() -> bytes:
    return CANVAS.read_bytes()


def held_app(recognizer: Recognizer, **bounds):
    backend = HeldBackend(recognizer.backend)
    app = create_app(recognizer=Recognizer(backend, recognizer.card), config=ServeConfig(**bounds))
    return app, backend


def connect(server: RunningServer) -> socket.socket:
    port = int(server.base_url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_after(sock: socket.socket, began: float, limit: float) -> tuple[bytes, float | None]:
    """What the server sent on ``sock`` and the seconds since ``began`` when it closed the
    connection; None if it was still open ``limit`` seconds after ``began``."""
    received = b""
    while (left := began + limit - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionError:
            return received, time.monotonic() - began
        if not chunk:
            return received, time.monotonic() - began
        received += chunk
    return received, None


def wait_ready(base_url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(base_url + "/api/ready").status_code != 200:
        assert time.monotonic() < deadline, "not ready after 30 s"
        time.sleep(0.02)


def post(base_url: str, data: bytes) -> httpx.Response:
    return httpx.post(
        base_url + "/api/recognize",
        content=data,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )


def test_a_full_queue_is_answered_503_with_retry_after_at_once(recognizer, canvas):
    app, backend = held_app(recognizer, max_queue=2, threads=2)
    with serve_in_thread(app) as server, ThreadPoolExecutor(2) as pool:
        wait_ready(server.base_url)
        backend.hold()
        held = [pool.submit(post, server.base_url, canvas) for _ in range(2)]
        deadline = time.monotonic() + 10
        while app.state.queue.held < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        began = time.monotonic()
        refused = post(server.base_url, canvas)
        took = time.monotonic() - began
        backend.open.set()
        answers = [future.result(timeout=30) for future in held]
        again = post(server.base_url, canvas)  # the slots were given back
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "busy" in refused.json()["detail"]
    assert took < 2  # refused at once, not queued behind the held requests
    assert [answer.status_code for answer in answers] == [200, 200]
    assert again.status_code == 200 and again.json()["number"] == "3"


def test_a_request_whose_client_left_while_it_waited_is_not_read(recognizer, canvas):
    app, backend = held_app(recognizer, threads=1)
    with serve_in_thread(app) as server, ThreadPoolExecutor(1) as pool:
        wait_ready(server.base_url)
        backend.hold()
        first = pool.submit(post, server.base_url, canvas)
        assert backend.entered.wait(10)  # the one thread is busy with the first image
        gone = connect(server)
        gone.sendall(
            b"POST /api/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(canvas), canvas)
        )
        deadline = time.monotonic() + 10
        while len(app.state.turns.queue) < 1:  # the second waits for its turn
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gone.close()
        time.sleep(0.3)  # the server notices
        backend.open.set()
        assert first.result(timeout=30).status_code == 200
        while app.state.queue.held:
            assert time.monotonic() < deadline + 30
            time.sleep(0.01)
        text = httpx.get(server.base_url + "/metrics").text
    found = re.findall(r'requests_total\{route="/api/recognize",status="(\d+)"\} (\S+)', text)
    counts = dict(found)
    assert counts == {"200": "1.0", "499": "1.0"}, counts  # the second was never read


def test_a_body_trickling_in_is_cut_off_at_the_body_deadline(recognizer):
    app = create_app(recognizer=recognizer, config=ServeConfig(body_timeout_s=1.0))
    with serve_in_thread(app) as server:
        sock = connect(server)
        sock.sendall(
            b"POST /api/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        began = time.monotonic()
        received, closed = b"", None
        while closed is None and time.monotonic() - began < 6:
            # Read first, then send the next byte: ten bytes a second would take hours.
            chunk, closed = closed_after(sock, time.monotonic(), 0.1)
            received += chunk
            if closed is None:
                sock.send(b"\x89")
        closed = None if closed is None else time.monotonic() - began
        sock.close()
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"within 1 s" in received
    assert closed is not None and 0.9 < closed < 3, closed


def test_idle_sockets_are_closed_after_the_keep_alive_time(recognizer):
    app = create_app(recognizer=recognizer, config=ServeConfig(keep_alive_s=1.0))
    with serve_in_thread(app) as server:
        fresh = [connect(server) for _ in range(20)]  # connect, then never send a byte
        used = connect(server)
        used.sendall(HEALTH)
        assert used.recv(65536).startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        closed = [closed_after(sock, began, 5)[1] for sock in [*fresh, used]]
    assert all(seconds is not None and seconds < 3 for seconds in closed), closed


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_deadline(recognizer):
    config = ServeConfig(header_timeout_s=1.0, keep_alive_s=5.0)
    app = create_app(recognizer=recognizer, config=config)
    head = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + b"x" * 100 + b"\r\n\r\n"
    with serve_in_thread(app) as server:
        sock = connect(server)
        began = time.monotonic()
        closed = None
        for byte in head:  # 150 bytes, one every 0.1 s: 15 s for the whole head
            _, closed = closed_after(sock, time.monotonic(), 0.1)
            if closed is not None:
                break
            sock.send(bytes([byte]))
        closed = None if closed is None else time.monotonic() - began
    assert closed is not None and 0.9 < closed < 3, closed  # not the 5 s of keep-alive


def test_sockets_past_max_connections_are_answered_503_and_closed(recognizer):
    app = create_app(recognizer=recognizer, config=ServeConfig(max_connections=4))
    with serve_in_thread(app) as server:
        idle = [connect(server) for _ in range(3)]
        fourth = connect(server)  # at the cap: still served
        fourth.sendall(HEALTH)
        assert fourth.recv(65536).startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        received, closed = closed_after(connect(server), began, 5)
        idle.pop().close()
        time.sleep(0.3)  # the server notices the close
        sixth = connect(server)
        sixth.sendall(HEALTH)
        served = sixth.recv(65536)
    assert received.startswith(b"HTTP/1.1 503 "), received
    assert b"retry-after: 1" in received.lower()
    assert closed is not None and closed < 1, closed
    assert served.startswith(b"HTTP/1.1 200 "), served


def test_keep_alive_answers_do_not_wait_for_a_delayed_ack(recognizer):
    # The listening socket is bound as uvicorn binds it for its workers (protocol number 0),
    # which leaves Nagle's algorithm on unless the server turns it off per connection.
    app = create_app(recognizer=recognizer)
    with serve_in_thread(app) as server, httpx.Client() as http:
        http.get(server.base_url + "/api/health")
        took = []
        for _ in range(10):  # one connection, kept alive
            began = time.perf_counter()
            assert http.get(server.base_url + "/api/health").status_code == 200
            took.append(time.perf_counter() - began)
    assert np.median(took) < 0.02, took  # a delayed ACK costs about 40 ms


def resident_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def test_stalled_uploads_are_bounded_in_number_and_memory(recognizer):
    config = ServeConfig(max_uploads=4, upload_queue=4, body_timeout_s=2.0, max_connections=100)
    app = create_app(recognizer=recognizer, config=config)
    clients, size = 40, 9_500_000
    body = b"\0" * size  # every client sends most of a 10 MB body, then stalls
    head = (
        b"POST /api/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.wait(0.02):
            peak = max(peak, resident_bytes())

    def upload_then_stall(sock: socket.socket) -> bytes:
        try:
            sock.sendall(body)
        except OSError:
            pass
        return closed_after(sock, time.monotonic(), 15)[0]

    with serve_in_thread(app) as server:
        baseline = resident_bytes()
        sampler = threading.Thread(target=sample)
        sampler.start()
        socks = [connect(server) for _ in range(clients)]
        for sock in socks:
            sock.sendall(head)
        time.sleep(0.5)  # every head read; those past the bounds are answered already
        answered, _, _ = select.select(socks, [], [], 0)
        refusals = [closed_after(sock, time.monotonic(), 5)[0] for sock in answered]
        admitted = [sock for sock in socks if sock not in answered]
        with ThreadPoolExecutor(len(admitted)) as pool:
            timeouts = list(pool.map(upload_then_stall, admitted))
        sampling.set()
        sampler.join()
    assert len(refusals) == clients - 8  # 4 receiving, 4 waiting for a slot
    assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refusals), refusals[0]
    assert all(b"retry-after: 1" in answer.lower() for answer in refusals)
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in timeouts), timeouts
    # 4 bodies at a time held in memory, not 40: 38 MB, against 380 MB unbounded.
    assert peak - baseline < 150 * 2**20, (peak - baseline) / 2**20


def test_a_request_in_flight_when_shutdown_starts_still_gets_its_200(recognizer, canvas):
    app, backend = held_app(recognizer, shutdown_timeout_s=20.0)
    server = serve_in_thread(app)
    wait_ready(server.base_url)
    backend.hold()
    with ThreadPoolExecutor(2) as pool:
        answer = pool.submit(post, server.base_url, canvas)
        assert backend.entered.wait(10)
        stopping = pool.submit(server.stop)
        deadline = time.monotonic() + 10
        while True:  # until the server stops accepting: shutdown has begun
            try:
                connect(server).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting 10 s after stop()"
            time.sleep(0.05)
        time.sleep(1.0)  # the request stays in flight well into the shutdown
        assert not answer.done()
        backend.open.set()
        response = answer.result(timeout=30)
        stopping.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["number"] == "3"


def test_gate_admits_slots_then_queues_then_refuses():
    async def scenario() -> list[str]:
        gate = Gate(slots=1, waiting=1)
        events = []
        assert await gate.enter()
        second = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        events.append(f"second waits: {not second.done()}")
        events.append(f"third refused: {not await gate.enter()}")
        gate.leave()  # hands the slot to the second
        events.append(f"second enters: {await second}")
        waiting = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        waiting.cancel()  # a client that leaves while queued frees its place
        await asyncio.gather(waiting, return_exceptions=True)
        gate.leave()
        events.append(f"free again: {gate.held == 0 and not gate.queue and gate.try_enter()}")
        return events

    assert asyncio.run(scenario()) == [
        "second waits: True",
        "third refused: True",
        "second enters: True",
        "free again: True",
    ]


def spawned_workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def open_sockets(pid: int) -> int:
    return sum(
        link.readlink().name.startswith("socket:") for link in Path(f"/proc/{pid}/fd").iterdir()
    )


def recognize_count(base_url: str) -> float:
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    found = re.search(
        r'^digitrec_http_requests_total\{route="/api/recognize",status="200"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_two_workers_start_answer_and_add_up_their_metrics(canvas):
    with loadtest.server_process(workers=2) as (base_url, process):
        workers = spawned_workers(process.pid)
        assert len(workers) == 2
        numbers = []
        for _ in range(8):  # each on a new connection, so both workers get some
            request = urllib.request.Request(
                base_url + "/api/recognize", data=canvas, headers={"Content-Type": "image/png"}
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                numbers.append(re.search(rb'"number":"(\d*)"', answer.read()).group(1))
        # Whichever worker answers /metrics counts the requests of both. A worker counts a
        # request once its answer has gone, so the last one may land just after its client read
        # it: wait (boundedly) for the total first.
        deadline = time.monotonic() + 5
        while recognize_count(base_url) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = [recognize_count(base_url) for _ in range(6)]
        # A burst of long-lived connections, like a load test's or a proxy's pool, is shared
        # by both workers (one listening socket each), not taken by whichever wakes first.
        before = [open_sockets(worker) for worker in workers]
        port = int(base_url.rsplit(":", 1)[1])
        pool = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        for sock in pool:
            sock.sendall(HEALTH)
        answers = [sock.recv(65536) for sock in pool]
        held = [open_sockets(worker) - count for worker, count in zip(workers, before, strict=True)]
        for sock in pool:
            sock.close()
    assert numbers == [b"3"] * 8
    assert counts == [8.0] * 6
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert min(held) >= 4, held  # of 32
    assert process.returncode == 0  # stopped by SIGTERM, gracefully
