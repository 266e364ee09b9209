"""Dataset downloads: HTTPS only (redirects included), capped in size before and after gunzip,
and one deadline for the whole download, with fake responses in place of the network."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest

from digitrec import data

CHUNK = bytes(2**20)


class EndlessResponse:
    """A response that never ends, counting the bytes handed out."""

    def __init__(self, piece: bytes = CHUNK, delay_s: float = 0.0) -> None:
        self.piece, self.delay_s, self.sent = piece, delay_s, 0

    def read1(self, size: int) -> bytes:
        time.sleep(self.delay_s)
        piece = self.piece[:size]
        self.sent += len(piece)
        return piece

    def read(self, size: int = -1) -> bytes:  # what an unbounded reader would call
        raise AssertionError("the body must be read in bounded steps")

    def __enter__(self) -> EndlessResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class BodyResponse(EndlessResponse):
    """A response with a fixed body."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def read1(self, size: int) -> bytes:
        piece, self.body = self.body[:size], self.body[size:]
        return piece


def gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    pieces = [compressor.compress(CHUNK) for _ in range(size // len(CHUNK))]
    return b"".join(pieces) + compressor.flush()


def test_every_mirror_is_https():
    for spec in data.DATASETS.values():
        assert spec.mirrors, spec.name
        for mirror in spec.mirrors:
            assert mirror.startswith("https://"), mirror


def test_a_plain_http_url_is_refused_without_connecting(monkeypatch):
    def never(url, timeout):
        raise AssertionError("connected")

    monkeypatch.setattr(data, "_open_https", never)
    with pytest.raises(data.DataError, match="HTTPS only"):
        data._from_url("http://example.org/t10k-labels-idx1-ubyte.gz", timeout=1.0)


def test_a_redirect_to_plain_http_is_refused():
    handler = data._HttpsOnlyRedirects()
    request = urllib.request.Request("https://mirror.example/a.gz")
    with pytest.raises(urllib.error.HTTPError, match="HTTPS only"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://mirror.example/a.gz")
    followed = handler.redirect_request(request, None, 302, "Found", {}, "https://b.example/a.gz")
    assert followed.full_url == "https://b.example/a.gz"


def test_a_download_over_the_cap_stops_reading(monkeypatch):
    response = EndlessResponse()
    monkeypatch.setattr(data, "_open_https", lambda url, timeout: response)
    with pytest.raises(data.DataError, match="download over 32 MiB"):
        data._from_url("https://mirror.example/train-images-idx3-ubyte.gz", timeout=1.0)
    assert response.sent <= data.MAX_DOWNLOAD_BYTES + data.READ_CHUNK_BYTES


def test_a_gzip_bomb_stops_at_the_cap_on_its_output(monkeypatch):
    bomb = gzip_of_zeros(data.MAX_RAW_BYTES + 8 * len(CHUNK))
    assert len(bomb) < 1_000_000  # a small download...
    monkeypatch.setattr(data, "_open_https", lambda url, timeout: BodyResponse(bomb))
    started = time.process_time()
    with pytest.raises(data.DataError, match="once decompressed"):  # ...refused once inflated
        data._from_url("https://mirror.example/train-images-idx3-ubyte.gz", timeout=1.0)
    assert time.process_time() - started < 2.0


def test_gunzip_reads_every_member_and_refuses_truncated_data():
    first, second = b"\x00\x00\x08\x01" + bytes(4), b"more bytes"
    assert data._maybe_gunzip(data.gzip_bytes(first) + data.gzip_bytes(second)) == first + second
    assert data._maybe_gunzip(first) == first  # not gzipped: as is
    with pytest.raises(data.DataError, match="truncated"):
        data._maybe_gunzip(data.gzip_bytes(bytes(1000))[:-12])
    with pytest.raises(data.DataError, match="once decompressed"):
        data._maybe_gunzip(data.gzip_bytes(bytes(1001)), limit=1000)


def test_a_trickling_download_stops_at_one_deadline_for_all_its_reads(monkeypatch):
    # Each read is quick (well within any per-read timeout); only the whole download is slow.
    response = EndlessResponse(piece=b"\x1f", delay_s=0.01)
    monkeypatch.setattr(data, "_open_https", lambda url, timeout: response)
    started = time.monotonic()
    with pytest.raises(data.DataError, match="deadline"):
        data._from_url("https://mirror.example/t10k-labels-idx1-ubyte.gz", 5.0, deadline_s=0.3)
    assert time.monotonic() - started < 2.0
    assert 0 < response.sent < 100


def test_fetch_reports_a_capped_mirror_and_uses_the_next(monkeypatch, tmp_path):
    arrays = {
        "train-images": np.zeros((2, 28, 28), np.uint8),
        "train-labels": np.array([1, 2], np.uint8),
        "test-images": np.ones((1, 28, 28), np.uint8),
        "test-labels": np.array([3], np.uint8),
    }
    raw = {part: data.idx_bytes(array) for part, array in arrays.items()}
    spec = data.DatasetSpec(
        name="tiny",
        files={part: f"{part}-file" for part in data.PARTS},
        sha256={part: data.sha256_bytes(raw[part]) for part in data.PARTS},
        classes=tuple("0123456789"),
        mirrors=("https://endless.example/", "https://good.example/"),
    )
    by_url = {f"https://good.example/{part}-file.gz": data.gzip_bytes(raw[part]) for part in raw}
    opened = []

    def fake_open(url, timeout):
        opened.append(url)
        return EndlessResponse() if "endless" in url else BodyResponse(by_url[url])

    monkeypatch.setitem(data.DATASETS, "tiny", spec)
    monkeypatch.setattr(data, "_open_https", fake_open)
    paths, sources = data.fetch("tiny", data_dir="", cache=tmp_path)
    assert set(sources.values()) == set(by_url)
    assert sum("endless" in url for url in opened) == 1  # over the cap once: not tried again
    for part, path in paths.items():
        assert path.read_bytes() == raw[part]
