"""The REST API through FastAPI's test client: the `recognize --json` contract, bad inputs (never a
500), the model card, readiness, metrics, OpenAPI, the page, CORS, concurrency and `digitrec bench
serve`. The bounds a live server keeps under abuse are in test_serve_limits.py."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec.bench import serving as loadtest
from digitrec.bench.serving import load_test
from digitrec.cli import main
from digitrec.serve import MAX_REQUEST_BYTES, create_app, serve_in_thread

DIGIT_FIELDS = {"digit", "confidence", "probabilities", "box", "uncertain", "not_digit"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int, rows: int = 0) -> bytes:
    """A grayscale PNG whose header says width x height; its data holds ``rows`` white rows,
    compressed to almost nothing (the rest of the image is missing)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * width  # filter type 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def app():
    return create_app()  # the bundled model (ONNX Runtime: loads in a few milliseconds)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def seven(mnist, paper_png) -> bytes:
    assert mnist.test_labels[0] == 7
    return paper_png(mnist.test_images[0])


@pytest.fixture(scope="module")
def seventy_two(mnist, paper_png) -> bytes:
    assert list(mnist.test_labels[:2]) == [7, 2]
    return paper_png(mnist.test_images[0], mnist.test_images[1])


def post_png(client: TestClient, data: bytes, query: str = "") -> httpx.Response:
    return client.post(
        f"/api/recognize{query}", content=data, headers={"Content-Type": "image/png"}
    )


def assert_problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


# --- the recognize contract -----------------------------------------------------------------


def test_upload_and_raw_body_answer_the_json_of_recognize_json(client, seven, tmp_path, capsys):
    path = tmp_path / "seven.png"
    path.write_bytes(seven)
    assert main(["recognize", str(path), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)

    upload = client.post("/api/recognize", files={"file": ("seven.png", seven, "image/png")})
    body = post_png(client, seven)
    for response, name in ((upload, "seven.png"), (body, "<body>")):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == set(cli) == {"path", "number", "text", "lines", "digits"}
        assert answer["path"] == name
        assert answer["number"] == "7"
        assert len(answer["digits"]) == 1
        digit = answer["digits"][0]
        assert set(digit) == DIGIT_FIELDS  # no model input unless ?stages=1
        assert digit["digit"] == 7 and not digit["uncertain"]
        assert len(digit["probabilities"]) == 10
        assert abs(sum(digit["probabilities"]) - 1) < 1e-4
        assert digit["confidence"] == max(digit["probabilities"])
        assert len(digit["box"]) == 4
        # The same model on the same bytes: the same answer as the command line, to the digit.
        assert answer["digits"] == cli["digits"]


def test_a_blank_image_has_no_digits(client):
    response = post_png(client, png_bytes(Image.new("L", (300, 200), 255)))
    assert response.status_code == 200
    assert response.json()["number"] == ""
    assert response.json()["digits"] == []


def test_two_digits_side_by_side_read_as_a_number(client, seventy_two):
    response = post_png(client, seventy_two)
    assert response.status_code == 200
    answer = response.json()
    assert answer["number"] == "72"
    assert [digit["digit"] for digit in answer["digits"]] == [7, 2]
    first, second = (digit["box"] for digit in answer["digits"])
    assert first[0] + first[2] <= second[0]  # left to right


def test_stages_return_the_28x28_model_input_of_each_digit(client, seventy_two):
    answer = post_png(client, seventy_two, "?stages=1").json()
    assert answer["number"] == "72"
    for digit in answer["digits"]:
        prefix, encoded = digit["image"].split(",", 1)
        assert prefix == "data:image/png;base64"
        picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert picture.size == (28, 28) and picture.mode == "L"
        pixels = np.asarray(picture)
        assert pixels.max() > 200  # white ink on black, like MNIST
        assert pixels[0].max() == pixels[-1].max() == 0  # fitted into 20x20: empty borders


# --- bad inputs: a 4xx with a one-line reason, never a 500 ----------------------------------


def test_a_body_over_10_mib_is_413(client):
    too_big = b"\x89PNG" + b"\0" * MAX_REQUEST_BYTES
    assert "too large" in assert_problem(post_png(client, too_big), 413)
    # Streamed without a Content-Length: counted as it arrives.
    streamed = client.post(
        "/api/recognize",
        content=(too_big[i : i + 2**20] for i in range(0, len(too_big), 2**20)),
        headers={"Content-Type": "image/png"},
    )
    assert "too large" in assert_problem(streamed, 413)
    upload = client.post("/api/recognize", files={"file": ("big.png", too_big, "image/png")})
    assert_problem(upload, 413)


def test_a_body_that_is_not_an_image_type_is_415(client, seven):
    response = client.post("/api/recognize", content=seven, headers={"Content-Type": "text/plain"})
    assert "text/plain" in assert_problem(response, 415)
    form = client.post("/api/recognize", data={"file": "seven"})  # url-encoded form
    assert_problem(form, 415)


@pytest.mark.parametrize(
    "kind",
    ["corrupt", "truncated", "empty", "no file field", "empty file", "text field",
     "bad boundary", "bad query"],
)  # fmt: skip
def test_unreadable_requests_are_422_with_a_one_line_reason(client, seven, kind):
    png = {"Content-Type": "image/png"}
    if kind == "corrupt":
        response = client.post("/api/recognize", content=b"\x89PNG not really", headers=png)
    elif kind == "truncated":
        response = client.post("/api/recognize", content=seven[: len(seven) // 2], headers=png)
    elif kind == "empty":
        response = client.post("/api/recognize", content=b"", headers=png)
    elif kind == "no file field":
        files = {"image": ("seven.png", seven, "image/png")}
        response = client.post("/api/recognize", files=files)
    elif kind == "empty file":
        response = client.post("/api/recognize", files={"file": ("seven.png", b"", "image/png")})
    elif kind == "text field":
        response = client.post(
            "/api/recognize", files={"other": ("a.png", seven)}, data={"file": "seven.png"}
        )
    elif kind == "bad boundary":
        response = client.post(
            "/api/recognize",
            content=b"no parts here",
            headers={"Content-Type": "multipart/form-data"},
        )
    else:
        response = client.post("/api/recognize?stages=maybe", content=seven, headers=png)
    assert_problem(response, 422)


def test_decompression_bombs_are_422(client):
    # A header claiming 10 gigapixels: refused before any pixel is decoded.
    assert_problem(post_png(client, png_claiming(100_000, 100_000)), 422)
    # A real 7000x7000 white PNG: 49 megapixels (under the decoder's limit) in 60 KB.
    solid = png_claiming(7000, 7000, rows=7000)
    assert len(solid) < 100_000
    assert "decompression bomb" in assert_problem(post_png(client, solid), 422)
    upload = client.post("/api/recognize", files={"file": ("solid.png", solid, "image/png")})
    assert_problem(upload, 422)


# --- the other endpoints --------------------------------------------------------------------


def test_health_and_model_card(client):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "model": "fastcnn", "backend": "onnx"}
    card = client.get("/api/model").json()
    assert card["model"] == "fastcnn"
    assert card["parameters"] > 10_000
    assert 0.99 < card["test_accuracy"] <= 1
    assert card["dataset"]["name"] == "mnist"
    assert set(card["dataset"]["sha256"]) == {
        "train-images", "train-labels", "test-images", "test-labels"
    }  # fmt: skip
    assert all(len(digest) == 64 for digest in card["dataset"]["sha256"].values())
    assert len(card["tensors_sha256"]) == 64
    assert card["recipe_name"] and card["recipe"]["model"] == "fastcnn"
    assert card["classes"] == [str(label) for label in range(10)]


def test_ready_is_503_until_the_model_has_answered_a_warm_up_then_200(app):
    fresh = create_app(recognizer=app.state.recognizer)
    cold = TestClient(fresh)  # no lifespan: nothing has warmed the model up
    response = cold.get("/api/ready")
    assert "warm-up" in assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert cold.get("/api/health").status_code == 200  # alive all the same
    with TestClient(fresh) as warming:  # the lifespan starts the warm-up
        deadline = time.monotonic() + 30
        while (answer := warming.get("/api/ready")).status_code == 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.02)
        assert answer.status_code == 200
        assert answer.json() == {"status": "ready", "model": "fastcnn"}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus's text format; labels in any order."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if found:
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
            if pairs == labels:
                return float(found.group(2))
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def test_metrics_count_requests_by_route_and_status_latency_digits_and_model(app, seventy_two):
    fresh = create_app(recognizer=app.state.recognizer)
    with TestClient(fresh) as client:
        for _ in range(3):
            assert post_png(client, seventy_two).status_code == 200
        assert post_png(client, b"\x89PNG not really").status_code == 422
        client.get("/api/health")
        client.get("/no/such/page/12345")
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = "digitrec_http_requests_total"
    assert metric(text, requests, route="/api/recognize", status="200") == 3
    assert metric(text, requests, route="/api/recognize", status="422") == 1
    assert metric(text, requests, route="/api/health", status="200") == 1
    # A path that matches no route counts as "other": random paths add no label values.
    assert metric(text, requests, route="other", status="404") == 1
    assert "12345" not in text
    latency = "digitrec_http_request_duration_seconds"
    assert metric(text, f"{latency}_count", route="/api/recognize") == 4
    assert metric(text, f"{latency}_bucket", route="/api/recognize", le="+Inf") == 4
    assert 0 < metric(text, f"{latency}_sum", route="/api/recognize") < 60
    assert metric(text, "digitrec_digits_read_total") == 6  # "72" three times
    card = fresh.state.recognizer.card
    digest = card.model_sha256 or card.tensors_sha256  # weights and card, or weights alone
    model = {"model": "fastcnn", "backend": "onnx", "sha256": digest}
    assert metric(text, "digitrec_model_info", **model) == 1


def test_openapi_documents_recognize_with_request_and_response_schemas(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/recognize"]["post"]
    content = post["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert content["image/*"]["schema"]["format"] == "binary"
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Recognition"
    }
    for status in ("408", "413", "415", "422", "503"):
        schema = post["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}
    schemas = spec["components"]["schemas"]
    assert {"path", "number", "digits"} <= set(schemas["Recognition"]["properties"])
    assert DIGIT_FIELDS <= set(schemas["DigitReading"]["properties"])
    for path in ("/api/health", "/api/model", "/api/ready", "/metrics"):
        assert "200" in spec["paths"][path]["get"]["responses"]
    assert "503" in spec["paths"]["/api/ready"]["get"]["responses"]
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        scripts = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert scripts and all(url.startswith("/static/docs/") for url in scripts), scripts
        for url in scripts:
            assert client.get(url).status_code == 200, url


def test_the_drawing_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<canvas id="canvas"' in page.text
    assert "'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="docs"', "")  # no CDN: works offline
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "api/recognize" in script.text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/nothing.js").status_code == 404


def test_cors_only_when_asked_for(app):
    preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    with TestClient(app) as plain:
        simple = plain.get("/api/health", headers={"Origin": "http://example.com"})
        assert "access-control-allow-origin" not in simple.headers
        answer = plain.options("/api/recognize", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    allowed = create_app(recognizer=app.state.recognizer, cors_origins=("http://example.com",))
    with TestClient(allowed) as open_client:
        answer = open_client.options("/api/recognize", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "http://example.com"
        simple = open_client.get("/api/health", headers={"Origin": "http://example.com"})
        assert simple.headers["access-control-allow-origin"] == "http://example.com"
        other = open_client.get("/api/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- concurrency and the load benchmark -----------------------------------------------------


def test_32_concurrent_requests_share_one_model(app, seventy_two):
    clients = 32
    start = threading.Barrier(clients, timeout=60)
    with serve_in_thread(app) as server, httpx.Client(timeout=30.0) as http:
        assert server.base_url.startswith("http://127.0.0.1:")

        def ask(_: int) -> tuple[int, dict]:
            start.wait()  # all 32 at once
            response = http.post(
                server.base_url + "/api/recognize",
                content=seventy_two,
                headers={"Content-Type": "image/png"},
            )
            return response.status_code, response.json()

        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(ask, range(clients)))
    assert [status for status, _ in answers] == [200] * clients
    assert answers[0][1]["number"] == "72"
    assert all(answer == answers[0][1] for _, answer in answers)


def test_load_test_counts_failures_and_wrong_answers(app, seven):
    with serve_in_thread(app) as server:
        right = load_test(server.base_url, seven, requests=8, concurrency=2, expected="7")
        wrong = load_test(server.base_url, seven, requests=8, concurrency=2, expected="1")
        broken = load_test(server.base_url, b"not an image", requests=8, concurrency=2)
    assert (right["errors"], wrong["errors"], broken["errors"]) == (0, 8, 8)
    with pytest.raises(ValueError):
        load_test(server.base_url, seven, requests=0)


def test_bench_serve_writes_its_report(mnist, data_cache, monkeypatch, tmp_path, capsys):
    client = "wrk" if shutil.which("wrk") else "built-in"
    monkeypatch.setenv("XDG_CACHE_HOME", str(data_cache.parent))
    monkeypatch.delenv("DIGITREC_DATA", raising=False)
    out = tmp_path / "bench-serve.json"
    arguments = ["--seconds", "1", "--concurrency", "1,3", "--workers", "1", "--out", str(out)]
    assert main(["bench", "serve", *arguments]) == 0
    report = json.loads(out.read_text())
    assert report["client"].startswith("wrk" if client == "wrk" else "built-in")
    assert report["backend"] == "onnx" and report["model_name"] == "fastcnn"
    assert [(image["name"], image["expected"]) for image in report["images"]] == [
        ("canvas PNG", "7"),
        ("scan PNG", "72"),
        ("12 MP JPEG", "7"),
    ]
    cells = [(run["image"], run["workers"], run["concurrency"]) for run in report["runs"]]
    assert cells == [
        (image, 1, clients)
        for image in ("canvas PNG", "scan PNG", "12 MP JPEG")
        for clients in (1, 3)
    ]
    for run in report["runs"]:
        assert run["requests"] > 0 and run["errors"] == 0, run
        assert run["requests_per_second"] > 0
        assert 0 < run["p50_ms"] <= run["p99_ms"]
    printed = capsys.readouterr().out
    assert "req/s" in printed and "p99 ms" in printed and report["client"] in printed


def test_bench_serve_says_when_it_uses_its_own_client(mnist):
    canvas = loadtest.bench_images(mnist.test_images, mnist.test_labels)[0]
    report = loadtest.bench_serve(
        [canvas], workers=[1], connections=[2], seconds=0.5, use_wrk=False
    )
    assert report["client"].startswith("built-in")
    (run,) = report["runs"]
    assert run["requests"] > 0 and run["errors"] == 0 and run["concurrency"] == 2


def test_the_bench_images_read_as_their_labels(mnist, app):
    images = loadtest.bench_images(mnist.test_images, mnist.test_labels)
    phone = Image.open(io.BytesIO(images[2].data))
    assert (phone.format, phone.size) == ("JPEG", (4000, 3000))
    for image in images:
        result = app.state.recognizer.recognize(image.data)
        assert (result.error, result.number) == (None, image.expected), image.name
