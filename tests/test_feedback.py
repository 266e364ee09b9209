"""The feedback store on SQLite and PostgreSQL (concurrent writers, limits, unusable records),
its endpoints (`POST /api/feedback`, the admin-only model reload), its commands (`digitrec
feedback`, `recognize --ask`) and `inputs.as_bytes` for every kind of image held in memory."""

from __future__ import annotations

import csv
import io
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from digitrec import feedback, preprocess
from digitrec.cli import main
from digitrec.feedback import FeedbackError, FeedbackStore
from digitrec.inputs import as_bytes
from digitrec.recognize import Recognizer, bundled_model
from digitrec.serve import create_app, serve_in_thread

POSTGRES = os.environ.get("DIGITREC_TEST_POSTGRES")
NO_POSTGRES = (
    "DIGITREC_TEST_POSTGRES is unset, so there is no PostgreSQL server to test against "
    "(.ci/run starts one and sets it)"
)


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer.load()  # the bundled model through ONNX Runtime


@pytest.fixture(scope="module")
def seventy_two(mnist, paper_png) -> tuple[bytes, str]:
    """A PNG of two MNIST test digits and the number they make."""
    first, second = 0, 1
    label = f"{mnist.test_labels[first]}{mnist.test_labels[second]}"
    return paper_png(mnist.test_images[first], mnist.test_images[second]), label


@pytest.fixture(scope="module")
def reading(recognizer, seventy_two):
    result = recognizer.recognize(seventy_two[0])
    assert result.number == seventy_two[1]
    return result


def postgres_schema_url(schema: str) -> str:
    """The test server's URL with every table looked up in (and created in) ``schema``."""
    separator = "&" if "?" in POSTGRES else "?"
    return f"{POSTGRES}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    """A fresh, empty store: an SQLite file, or a schema of its own on the test server."""
    if request.param == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    if not POSTGRES:
        pytest.skip(NO_POSTGRES)
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield postgres_schema_url(schema)
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(location):
    with FeedbackStore(location) as opened:
        yield opened


# --- the store ----------------------------------------------------------------------------------


def test_a_record_keeps_the_image_and_the_crops_the_model_saw(store, recognizer, seventy_two):
    image, label = seventy_two
    saved = feedback.record(store, recognizer, image, label)
    again = store.get(saved.id)
    assert again == saved and again.image == image
    assert (again.label, again.answer, again.usable, again.reason) == (label, label, True, "")
    assert again.weights_sha256 == recognizer.card.tensors_sha256
    result = recognizer.recognize(image)
    assert [list(m.box) for m in again.marks] == [d.box for d in result.digits]
    for mark, digit in zip(again.marks, result.digits, strict=True):
        assert mark.pixels.dtype == np.uint8 and mark.pixels.shape == (28, 28)
        # The crop as stored is the model's input to within uint8 rounding.
        assert np.abs(mark.pixels / 255.0 - digit.image).max() <= 0.5 / 255 + 1e-6
    assert [d for _, d in again.pairs()] == [int(c) for c in label]
    assert store.get(saved.id + 1000) is None


def test_eight_writers_at_once_lose_nothing(location, reading, seventy_two):
    threads, writes = 8, 25
    # The timeout: a thread that fails before the barrier fails the test instead of hanging it.
    start = threading.Barrier(threads, timeout=60)

    def write(thread: int) -> list[int]:
        # One store per thread as well as many connections per store: separate processes
        # (a server and a fine-tune) open their own.
        with FeedbackStore(location) as own:
            start.wait()
            return [
                own.add(seventy_two[0], f"{thread}-{i}", reading, "d").id for i in range(writes)
            ]

    with ThreadPoolExecutor(threads) as pool:
        ids = [i for chunk in pool.map(write, range(threads)) for i in chunk]
    assert len(set(ids)) == threads * writes
    with FeedbackStore(location) as reader:
        labels = sorted(record.label for record in reader.records(images=False))
        assert reader.count() == threads * writes
    assert labels == sorted(f"{t}-{i}" for t in range(threads) for i in range(writes))


def test_threads_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path):
    # Switching a new file to WAL takes a lock SQLite does not wait for on its own; a few in a
    # hundred new files opened by eight threads at once met it.
    threads, files = 8, 100
    for index in range(files):
        path = tmp_path / f"{index}.db"
        start = threading.Barrier(threads, timeout=60)

        def open_store(_: int, path=path, start=start) -> int:
            start.wait()
            with FeedbackStore(path) as store:
                return store.count()

        with ThreadPoolExecutor(threads) as pool:
            assert list(pool.map(open_store, range(threads))) == [0] * threads


def test_a_reader_goes_on_while_writers_write(location, reading, seventy_two):
    with FeedbackStore(location) as first:
        for index in range(feedback.READ_BATCH + 5):
            first.add(seventy_two[0], str(index), reading, "d")
        seen = 0
        for _ in first.records():  # a batch is read, then a writer commits, then the next
            if seen == 0:
                first.add(seventy_two[0], "99", reading, "d")
            seen += 1
        assert seen == feedback.READ_BATCH + 6


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("1" * 33, "33 characters; at most 32"),
        ("12a", "not 'a'"),
        ("1 2", "not ' '"),
        ("--", "no digit"),
        ("４２", "not"),  # full-width digits are not ASCII digits
    ],
)
def test_bad_labels_are_refused_before_anything_is_stored(store, reading, seventy_two, label, why):
    with pytest.raises(FeedbackError, match=why):
        store.add(seventy_two[0], label, reading, "d")
    assert store.count() == 0


def test_labels_keep_separators_and_lines_within_32_characters(store, reading, seventy_two):
    assert feedback.check_label(" 3.14\r\n2/7 ") == "3.14\n2/7"
    assert feedback.check_label("1" * 32) == "1" * 32
    assert feedback.check_label("12:30,5-6") == "12:30,5-6"
    saved = store.add(seventy_two[0], "7\n2", reading, "d")
    assert saved.label == "7\n2" and saved.usable  # two digits on two lines, two marks read


def test_images_are_checked_as_recognize_checks_them(store, reading, recognizer):
    with pytest.raises(preprocess.ImageError, match="not an image"):
        store.add(b"a text file", "7", reading, "d")
    with pytest.raises(preprocess.ImageError, match="GIF"):
        store.add(b"GIF89a-not-really", "7", reading, "d")
    too_large = b"\x89PNG\r\n\x1a\n" + bytes(preprocess.MAX_FILE_BYTES)
    with pytest.raises(preprocess.ImageError, match="too large"):
        store.add(too_large, "7", reading, "d")
    broken = recognizer.recognize(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(preprocess.ImageError):
        store.add(b"\x89PNG\r\n\x1a\nbroken", "7", broken, "d")
    assert store.count() == 0


def test_a_label_with_another_digit_count_is_kept_but_unusable(store, reading, seventy_two):
    saved = store.add(seventy_two[0], "723", reading, "d")
    assert not saved.usable
    assert saved.reason == "the label has 3 digits but the model found 2 digits"
    assert saved.pairs() == []
    assert [r.id for r in store.records(usable=True)] == []
    assert [r.id for r in store.records(usable=False)] == [saved.id]


def test_a_mark_taken_for_no_digit_pairs_with_a_digit_when_the_counts_agree():
    pixels = np.zeros((28, 28), np.uint8)
    marks = (
        feedback.Mark((0, 0, 5, 5), 7, False, 0, pixels),
        feedback.Mark((9, 0, 5, 5), 3, True, 0, pixels),
    )
    assert feedback.match_marks("71", marks) == (marks, "")  # the scribble was a 1
    assert feedback.match_marks("7", marks) == (marks[:1], "")  # it was no digit
    chosen, why = feedback.match_marks("712", marks)
    assert chosen is None and why.endswith("found 1 digit and 1 other mark")


def test_delete_stats_and_export(store, reading, seventy_two, tmp_path):
    image, label = seventy_two
    right = store.add(image, label, reading, "d")
    wrong = store.add(image, label[::-1], reading, "d")  # the model read both digits wrong
    unusable = store.add(image, "1", reading, "d")
    stats = store.stats()
    assert (stats.records, stats.usable, stats.wrong_answers) == (3, 2, 2)
    first, second = int(label[0]), int(label[1])
    assert stats.digits[first].labelled == 2 and stats.digits[first].wrong == 1
    assert stats.digits[second].labelled == 2 and stats.digits[second].wrong == 1
    assert sum(s.labelled for s in stats.digits.values()) == 4
    labels = feedback.export(store, tmp_path / "out")
    rows = list(csv.DictReader(labels.open()))
    assert [int(r["id"]) for r in rows] == [right.id, wrong.id, unusable.id]
    assert rows[2]["usable"] == "0" and "1 digit" in rows[2]["reason"]
    assert (tmp_path / "out" / rows[0]["file"]).read_bytes() == image
    assert rows[0]["file"].endswith(".png")
    assert store.delete(wrong.id) and not store.delete(wrong.id)
    assert [r.id for r in store.latest()] == [unusable.id, right.id]


def test_where_the_store_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(feedback.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert feedback.resolve_location() == str(tmp_path / "data" / "digitrec" / "feedback.db")
    monkeypatch.setenv(feedback.ENV_VAR, str(tmp_path / "env.db"))
    assert feedback.resolve_location() == str(tmp_path / "env.db")
    assert feedback.resolve_location(tmp_path / "flag.db") == str(tmp_path / "flag.db")
    with FeedbackStore() as opened:  # created with its folder on first use, in WAL mode
        assert opened.count() == 0
    assert (tmp_path / "env.db").is_file()
    url = "postgresql://user:s3cret@db.example:5432/digits"
    assert feedback.describe(url) == "postgresql://user:***@db.example:5432/digits"


def test_an_unreachable_store_is_one_line(tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(FeedbackError, match="cannot open the feedback store"):
        FeedbackStore(tmp_path / "file" / "feedback.db")
    if POSTGRES:
        with pytest.raises(FeedbackError, match=r"cannot open .*:\*\*\*@127\.0\.0\.1:9/"):
            FeedbackStore("postgresql://user:pw@127.0.0.1:9/none")


# --- the endpoints ------------------------------------------------------------------------------

TOKEN = "s3cret-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(tmp_path):
    return create_app(admin_token=TOKEN, feedback_db=tmp_path / "api.db")


def post_feedback(client, image: bytes, label: str | None, name: str = "d.png"):
    fields = {} if label is None else {"label": label}
    return client.post("/api/feedback", files={"file": (name, image, "image/png")}, data=fields)


def test_feedback_is_stored_with_what_the_serving_model_read(app, seventy_two, tmp_path):
    image, label = seventy_two
    client = TestClient(app)
    answer = post_feedback(client, image, label)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["label"], body["answer"], body["usable"]) == (label, label, True)
    wrong = post_feedback(client, image, "7")
    assert wrong.status_code == 201 and not wrong.json()["usable"]
    with FeedbackStore(tmp_path / "api.db") as opened:
        stored = opened.get(body["id"])
    assert stored.image == image and len(stored.marks) == 2
    assert (
        stored.weights_sha256 == body["weights_sha256"] == app.state.recognizer.card.tensors_sha256
    )


def test_bad_feedback_is_refused_and_stores_nothing(app, seventy_two, tmp_path):
    image, _ = seventy_two
    client = TestClient(app)
    cases = {
        "label": post_feedback(client, image, "7 or 1"),
        "long": post_feedback(client, image, "1" * 33),
        "no label": post_feedback(client, image, None),
        "not an image": post_feedback(client, b"hello", "7"),
        "empty": post_feedback(client, b"", "7"),
        "no file": client.post("/api/feedback", files={"label": (None, "7")}),
    }
    assert {name: r.status_code for name, r in cases.items()} == dict.fromkeys(cases, 422)
    assert "label" in cases["no label"].json()["detail"]
    raw = client.post("/api/feedback", content=image, headers={"Content-Type": "image/png"})
    form_fields = client.post("/api/feedback", data={"label": "7"})  # url-encoded: no file
    assert raw.status_code == form_fields.status_code == 415
    form = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(11 * 2**20)}
    huge = client.post("/api/feedback", content=b"x", headers=form)
    assert huge.status_code == 413
    assert not (tmp_path / "api.db").exists()  # nothing good arrived: no store was created


def test_reload_is_off_without_an_admin_token(tmp_path):
    client = TestClient(create_app(feedback_db=tmp_path / "x.db"))
    answer = client.post("/api/model/reload", headers=ADMIN)
    assert answer.status_code == 404 and "--admin-token" in answer.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ],
)
def test_reload_needs_the_admin_token(app, headers):
    answer = TestClient(app).post("/api/model/reload", headers=headers, json={})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"


def test_a_refused_model_leaves_the_old_one_serving(app, seventy_two, tmp_path):
    client = TestClient(app)
    before = client.get("/api/model").json()
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(bundled_model().read_bytes())
    data[-100] ^= 0xFF  # a flipped weight: the digest check refuses it
    damaged.write_bytes(bytes(data))
    for body in ({"model": str(damaged)}, {"model": str(tmp_path / "missing")}):
        answer = client.post("/api/model/reload", headers=ADMIN, json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].startswith("model not loaded, the old one still serves")
    assert "digest" in answer.json()["detail"] or "no model" in answer.json()["detail"]
    unknown = client.post("/api/model/reload", headers=ADMIN, json={"path": "x"})
    assert unknown.status_code == 422
    assert client.get("/api/model").json() == before
    read = client.post(
        "/api/recognize", content=seventy_two[0], headers={"Content-Type": "image/png"}
    )
    assert read.json()["number"] == seventy_two[1]


def test_reload_swaps_the_model_while_requests_keep_being_answered(app, seventy_two):
    image, label = seventy_two
    assert TestClient(app).get("/api/health").json()["backend"] == "onnx"
    clients, per_client = 4, 12
    with serve_in_thread(app) as server, httpx.Client(timeout=30.0) as http:

        def read(_: int) -> list[tuple[int, str]]:
            answers = []
            for _ in range(per_client):
                response = http.post(
                    server.base_url + "/api/recognize",
                    content=image,
                    headers={"Content-Type": "image/png"},
                )
                answers.append((response.status_code, response.json().get("number")))
            return answers

        with ThreadPoolExecutor(clients) as pool:
            reading = [pool.submit(read, i) for i in range(clients)]
            swaps = []
            for body in ({"model": str(bundled_model())}, {}, {"model": str(bundled_model())}):
                swaps.append(
                    http.post(server.base_url + "/api/model/reload", headers=ADMIN, json=body)
                )
            answers = [a for future in reading for a in future.result()]
        health = http.get(server.base_url + "/api/health").json()
    assert [s.status_code for s in swaps] == [200, 200, 200]
    assert [s.json()["backend"] for s in swaps] == ["torch", "onnx", "torch"]
    assert health["backend"] == "torch"  # the last swap is the model serving now
    assert answers == [(200, label)] * (clients * per_client)


def test_a_reload_in_one_worker_reaches_the_others(tmp_path, monkeypatch, seventy_two):
    # Two apps sharing the reload file stand for two worker processes of `serve --workers 2`.
    monkeypatch.setenv("DIGITREC_RELOAD_FILE", str(tmp_path / "reload.json"))
    first, second = (
        TestClient(create_app(admin_token=TOKEN, feedback_db=tmp_path / f"{n}.db"))
        for n in range(2)
    )
    assert second.get("/api/health").json()["backend"] == "onnx"
    swapped = first.post("/api/model/reload", headers=ADMIN, json={"model": str(bundled_model())})
    assert swapped.status_code == 200 and swapped.json()["backend"] == "torch"
    # The other worker loads it before its next answer, and that answer is the new model's.
    read = second.post(
        "/api/recognize", content=seventy_two[0], headers={"Content-Type": "image/png"}
    )
    assert read.json()["number"] == seventy_two[1]
    assert second.get("/api/health").json()["backend"] == "torch"
    metrics = second.get("/metrics").text
    assert 'backend="torch"' in metrics and 'backend="onnx"' in metrics
    serving = [line for line in metrics.splitlines() if line.startswith("digitrec_model_info{")]
    assert sorted(line.split()[-1] for line in serving) == ["0.0", "1.0"]
    assert any('backend="torch"' in line and line.endswith(" 1.0") for line in serving)
    # A model that fails to load in the others keeps their old one, and says so in the log.
    (tmp_path / "reload.json").write_text('{"model": "/nowhere/model.safetensors"}')
    assert second.get("/api/health").json()["backend"] == "torch"


# --- the commands -------------------------------------------------------------------------------


@pytest.fixture
def cli_store(tmp_path, monkeypatch):
    location = tmp_path / "cli.db"
    monkeypatch.setenv(feedback.ENV_VAR, str(location))
    return location


def test_feedback_commands(cli_store, seventy_two, tmp_path, capsys):
    image, label = seventy_two
    path = tmp_path / "seventy-two.png"
    path.write_bytes(image)
    assert main(["feedback", "add", str(path), "--label", label]) == 0
    assert main(["feedback", "add", str(path), "--label", "1"]) == 0
    out = capsys.readouterr().out
    assert f"stored record 1: label {label}, the model read {label}\n" in out
    assert "record 2: label 1, the model read 72 (not usable: the label has 1 digit" in out
    assert main(["feedback", "add", str(path), "--label", "x"]) == 1
    assert "the label may hold only digits" in capsys.readouterr().err
    assert main(["feedback", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["id", "created", "label", "answer"] and len(listing) == 3
    assert main(["feedback", "stats", "--json"]) == 0
    import json

    stats = json.loads(capsys.readouterr().out)
    assert (stats["records"], stats["usable"], stats["wrong_answers"]) == (2, 1, 1)
    assert stats["digits"][label[0]] == {"labelled": 1, "wrong": 0}
    assert main(["feedback", "export", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "000001.png").read_bytes() == image
    assert main(["feedback", "delete", "2"]) == 0 and main(["feedback", "delete", "2"]) == 1
    assert "no feedback record 2" in capsys.readouterr().err
    other = tmp_path / "other.db"
    assert main(["feedback", "list", "--json", "--feedback-db", str(other)]) == 0
    assert capsys.readouterr().out == "" and other.is_file()


def test_recognize_ask_stores_confirmations_and_corrections(
    cli_store, seventy_two, tmp_path, monkeypatch, capsys
):
    image, label = seventy_two
    paths = []
    for index in range(4):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(image)
    # Enter: right; a wrong try, then a correction; a correction; then the input ends.
    monkeypatch.setattr("sys.stdin", io.StringIO("\nseven\n17\n27\n"))
    assert main(["recognize", "--ask", *map(str, paths)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("The number is probably 72") == 4
    assert captured.err.count("right? [Enter = yes, or type the right number]") == 5
    assert "the label may hold only digits" in captured.err
    with FeedbackStore(cli_store) as opened:
        records = list(opened.records())
    assert [(r.label, r.answer) for r in records] == [(label, label), ("17", label), ("27", label)]
    assert all(r.image == image and r.usable for r in records)


def test_recognize_without_ask_stores_nothing(cli_store, seventy_two, tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(seventy_two[0])
    monkeypatch.setattr("sys.stdin", io.StringIO("17\n"))
    assert main(["recognize", str(path)]) == 0
    assert not cli_store.exists()


# --- every kind of image held in memory ---------------------------------------------------------


def in_memory_forms(gray: np.ndarray, tmp_path: Path) -> dict[str, object]:
    """The same picture (uint8 gray, dark ink on white) as every kind of source `as_bytes`
    takes."""
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "PNG")
    png = buffer.getvalue()
    path = tmp_path / "picture.png"
    path.write_bytes(png)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    return {
        "path": path,
        "path str": str(path),
        "bytes": png,
        "bytearray": bytearray(png),
        "memoryview": memoryview(png),
        "BytesIO": io.BytesIO(png),
        "open file": path.open("rb"),
        "PIL L": Image.fromarray(gray),
        "PIL RGB": Image.fromarray(rgb),
        "PIL RGBA": Image.fromarray(rgb).convert("RGBA"),
        "PIL P": Image.fromarray(rgb).convert("P"),
        "PIL CMYK": Image.fromarray(rgb).convert("CMYK"),
        "PIL F": Image.fromarray(gray.astype(np.float32) / 255.0),
        "gray uint8": gray,
        "gray (H, W, 1)": gray[:, :, None],
        "gray float": gray.astype(np.float64) / 255.0,
        "gray float32": gray.astype(np.float32) / 255.0,
        "RGB uint8": rgb,
        "RGB float": rgb.astype(np.float32) / 255.0,
        "RGBA uint8": np.dstack([rgb, np.full(gray.shape, 255, np.uint8)]),
        "bool": gray > 127,
        "non-contiguous": np.asfortranarray(gray),
    }


def test_every_in_memory_input_reads_the_same_number(recognizer, mnist, tmp_path):
    row = np.concatenate([np.pad(mnist.test_images[i], 8) for i in (0, 1)], axis=1)
    gray = np.asarray(Image.fromarray(255 - row).resize((row.shape[1] * 4, row.shape[0] * 4)))
    forms = in_memory_forms(gray, tmp_path)
    numbers = {
        name: recognizer.recognize(as_bytes(source)).number for name, source in forms.items()
    }
    forms["open file"].close()
    assert numbers == dict.fromkeys(forms, "72")
    decoded = preprocess.decode(as_bytes(gray))
    assert np.array_equal(np.rint(decoded * 255).astype(np.uint8), gray)  # lossless


@pytest.mark.parametrize(
    ("source", "error", "why"),
    [
        (np.full((8, 8), 1.5), preprocess.ImageError, "values in 0..1"),
        (np.full((8, 8), np.nan), preprocess.ImageError, "NaN"),
        (np.zeros((8, 8), np.int32), preprocess.ImageError, "uint8, bool or float"),
        (np.zeros((2, 8, 8, 3), np.uint8), preprocess.ImageError, r"\(H, W\) gray"),
        (np.zeros((8, 8, 2), np.uint8), preprocess.ImageError, r"\(H, W\) gray"),
        (np.zeros((0, 8), np.uint8), preprocess.ImageError, "no pixels"),
        (b"", preprocess.ImageError, "empty"),
        (io.BytesIO(b""), preprocess.ImageError, "empty"),
        (io.StringIO("text"), TypeError, "text mode"),
        (12, TypeError, "from a int"),
        ([[0, 1]], TypeError, "from a list"),
    ],
)
def test_unusable_sources_are_refused_in_one_line(source, error, why):
    with pytest.raises(error, match=why):
        as_bytes(source)


def test_oversized_sources_are_refused_before_encoding():
    with pytest.raises(preprocess.ImageError, match="megapixels"):
        as_bytes(np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (10_000, 10_000), (0, 0)))
    with pytest.raises(preprocess.ImageError, match="too large"):
        as_bytes(io.BytesIO(bytes(preprocess.MAX_FILE_BYTES + 1)))


# --- the drawing page ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from test_browser import CHROMIUM, launch

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def wait_for_status(page, record_id: int) -> str:
    status = "document.querySelector('#feedback-status').textContent"
    page.wait_for_function(f"() => {status}.includes('record {record_id}')")
    return page.text_content("#feedback-status")


def test_the_page_stores_corrections_and_reads_a_photo(browser, seventy_two, tmp_path):
    from test_browser import answer, draw, open_page

    image, label = seventy_two
    location = tmp_path / "page.db"
    problems: list[str] = []
    with serve_in_thread(create_app(feedback_db=location)) as server:
        page = open_page(browser, server.base_url, problems)
        assert page.is_hidden("#feedback")  # nothing read, nothing to confirm
        draw(page, "7")
        assert answer(page) == "7"
        page.fill("#correct", "1")
        page.click("#correction button[type=submit]")
        assert wait_for_status(page, 1).startswith("Thank you: saved as record 1")
        page.click("#right")
        wait_for_status(page, 2)
        page.fill("#correct", "one")
        page.click("#correction button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector('#feedback-status').dataset.state === 'error'"
        )
        assert "only digits" in page.text_content("#feedback-status")
        page.set_input_files(
            "#photo", files=[{"name": "72.png", "mimeType": "image/png", "buffer": image}]
        )
        page.wait_for_function(f"() => document.querySelector('#answer').textContent === '{label}'")
        # The answer is shown first; the photo is drawn once the browser has decoded it.
        page.wait_for_selector("#photo-view", state="visible")
        assert page.locator("#digits .digit").count() == 2
        page.click("#right")
        wait_for_status(page, 3)
        page.click("#clear")  # drawing again puts the photo and its feedback away
        assert page.is_hidden("#feedback") and page.is_hidden("#photo-figure")
        page.close()
    assert problems == []
    with FeedbackStore(location) as opened:
        records = list(opened.records())
    assert [(r.label, r.answer) for r in records] == [("1", "7"), ("7", "7"), (label, label)]
    assert records[2].image == image  # the file as chosen, not a re-encoding
