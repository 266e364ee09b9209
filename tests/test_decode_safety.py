"""No file may hang, crash or fool the image reader, in the command line or the server: only the
allowed formats are opened, every header is checked before a pixel is decoded, bombs are refused
by their image data (not their padding), scan bombs by their marker count, any decoder failure
is that file's one-line error, and large files are read in a process killed at a deadline."""

from __future__ import annotations

import io
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from digitrec import preprocess
from digitrec.cli import main
from digitrec.preprocess import ImageError
from digitrec.serve import create_app


def encode(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def page() -> Image.Image:
    """A 60x40 light page with a dark vertical stroke in its middle third."""
    pixels = np.full((40, 60), 230, np.uint8)
    pixels[8:32, 27:33] = 20
    return Image.fromarray(pixels)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with its length and CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def blank_png(width: int, height: int) -> bytes:
    """A white 8-bit gray PNG, compressed row by row (no big array in memory)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * width  # filter type 0, then the pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def idat_length(png: bytes) -> int:
    """The length of the one IDAT chunk of a PNG made by `blank_png`."""
    return struct.unpack(">I", png[png.index(b"IDAT") - 4 : png.index(b"IDAT")])[0]


def padded(png: bytes, size: int) -> bytes:
    """``png`` with an ancillary junk chunk after IHDR, padding the file to ``size`` bytes."""
    after_header = len(PNG_SIGNATURE) + 25
    junk = chunk(b"juNk", bytes(size - len(png) - 12))
    return png[:after_header] + junk + png[after_header:]


def scan_bomb(side: int = 4000, repeats: int = 500) -> bytes:
    """A blank progressive JPEG whose last scan is repeated ``repeats`` times before its end."""
    jpeg = encode(Image.new("L", (side, side), 255), "JPEG", progressive=True)
    last_scan, end = jpeg.rfind(b"\xff\xda"), jpeg.rfind(b"\xff\xd9")
    return jpeg[:end] + jpeg[last_scan:end] * repeats + jpeg[end:]


def multi_frame(file_format: str) -> bytes:
    first = Image.new("L", (20, 30), 255)
    second = Image.new("L", (45, 45), 0)
    if file_format == "GIF":
        first, second = first.convert("P"), second.convert("P")
    return encode(first, file_format, save_all=True, append_images=[second])


def allowed_samples() -> dict[str, bytes]:
    gray = page()
    rgb = gray.convert("RGB")
    return {
        "png": encode(gray, "PNG"),
        "jpeg": encode(rgb, "JPEG", quality=95),
        "progressive-jpeg": encode(rgb, "JPEG", quality=95, progressive=True),
        "mpo": encode(rgb, "MPO", quality=95, save_all=True, append_images=[rgb]),
        "gif": encode(gray.convert("P"), "GIF"),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
        "webp": encode(rgb, "WEBP", lossless=True),
        "ppm": encode(rgb, "PPM"),
        "pgm": encode(gray, "PPM"),
        "pbm": encode(gray.point(lambda value: 255 if value > 128 else 0).convert("1"), "PPM"),
        "multi-frame-tiff": multi_frame("TIFF"),
        "multi-frame-gif": multi_frame("GIF"),
    }


def refused_samples() -> dict[str, bytes]:
    gray = page()
    inner_png = encode(Image.new("L", (256, 256), 255), "PNG")
    ico = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, 0, 22)
    ico = ico[:14] + struct.pack("<I", len(inner_png)) + ico[18:] + inner_png
    return {
        "ICO": ico,
        "EPS": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 60 40\nshowpage\n",
        "PSD": b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 1, 40, 60, 8, 1) + bytes(64),
        "AVIF": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64),
        "HEIF": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
        "PCX": encode(gray, "PCX"),
        "SGI": encode(gray, "SGI"),
        "DDS": encode(gray.convert("RGB"), "DDS"),
        "PDF": encode(gray, "PDF"),
    }


def assert_one_line(error: pytest.ExceptionInfo[ImageError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app()) as client:
        yield client


def post(client: TestClient, data: bytes):
    return client.post("/api/recognize", content=data, headers={"Content-Type": "image/png"})


# --- 1. only the allowed formats are opened -----------------------------------------------------


@pytest.mark.parametrize("name", list(allowed_samples()))
def test_each_allowed_format_decodes(name):
    gray = preprocess.decode(allowed_samples()[name])
    if name.startswith("multi-frame"):
        assert gray.shape == (30, 20) and gray.min() > 0.9  # the first frame, white
        return
    assert gray.shape == (40, 60)
    assert gray[8:32, 28:32].mean() < 0.2, "the stroke stays dark"
    assert gray[:, :20].mean() > 0.8, "the paper stays light"


@pytest.mark.parametrize("name", list(refused_samples()))
def test_other_formats_are_refused_by_name_without_decoding(name, monkeypatch):
    from PIL import IcoImagePlugin

    def never(self):
        raise AssertionError("an ICO was decoded")

    monkeypatch.setattr(IcoImagePlugin.IcoImageFile, "load", never)
    with pytest.raises(ImageError) as error:
        preprocess.decode(refused_samples()[name])
    message = assert_one_line(error)
    assert message.startswith(f"unsupported image format {name}; use PNG, JPEG"), message


def test_unknown_and_damaged_headers_keep_their_messages():
    with pytest.raises(ImageError, match="not an image"):
        preprocess.decode(b"hello, this is a text file named digit.png\n")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        preprocess.decode(allowed_samples()["png"][:20])


# --- 2. headers are checked before any pixel is decoded -----------------------------------------


@pytest.mark.parametrize("name", list(allowed_samples()))
def test_opening_decodes_no_pixel(name, monkeypatch):
    data = allowed_samples()[name]

    def never(self):
        raise AssertionError("pixels decoded while opening")

    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    image = preprocess.open_image(data)
    assert image.size == ((20, 30) if name.startswith("multi-frame") else (60, 40))


def test_a_webp_claiming_too_many_pixels_is_refused_before_its_decoder_allocates(monkeypatch):
    from PIL import WebPImagePlugin

    # A real WebP behind an extended header (VP8X) claiming a 9000x9000 canvas: over our limit,
    # under Pillow's own, and the decoder allocates the whole canvas as it is created.
    webp = encode(page().convert("RGB"), "WEBP")
    extended = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (8999).to_bytes(3, "little") * 2
    body = b"WEBP" + extended + webp[12:]
    data = b"RIFF" + struct.pack("<I", len(body)) + body

    def never(*args):
        raise AssertionError("WebP decoder created")

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", never)
    with pytest.raises(ImageError, match="9000x9000 pixels") as error:
        preprocess.decode(data)
    assert_one_line(error)


# --- 3. a decompression bomb is judged by its image data, not its padding -----------------------


@pytest.fixture(scope="module")
def padded_bomb() -> bytes:
    bomb = padded(blank_png(7000, 7000), 505_000)
    assert len(bomb) == 505_000  # under 200 pixels per byte of file...
    assert 200 * idat_length(bomb) < 7000 * 7000  # ...far over per byte of image data
    return bomb


def test_a_padded_png_bomb_is_refused_in_the_cli_before_decoding(
    padded_bomb, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "padded.png"
    path.write_bytes(padded_bomb)

    def never(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    assert main(["recognize", str(path)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "error: decompression bomb: 7000x7000" in lines[0], lines


def test_a_padded_png_bomb_is_422_from_the_server(padded_bomb, client):
    response = post(client, padded_bomb)
    assert response.status_code == 422
    assert "decompression bomb" in response.json()["detail"]


def test_png_image_data_counts_idat_chunks_only():
    png = blank_png(300, 200)
    assert preprocess.image_data_size(png) == idat_length(png)
    assert preprocess.image_data_size(padded(png, 100_000)) == idat_length(png)
    many = png[:33] + chunk(b"teXt", b"") * (preprocess.MAX_SEGMENTS + 1) + png[33:]
    with pytest.raises(ImageError, match="too many PNG chunks"):
        preprocess.open_image(many)


# --- 4. a progressive JPEG repeating its scans is refused from its markers ----------------------


def test_a_jpeg_scan_bomb_is_refused_quickly_in_the_cli(tmp_path, capsys):
    path = tmp_path / "scans.jpg"
    path.write_bytes(scan_bomb())
    started = time.process_time()
    assert main(["recognize", str(path)]) == 2
    assert time.process_time() - started < 2.0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "error: too many JPEG scans" in lines[0], lines


def test_a_jpeg_scan_bomb_is_422_from_the_server(client):
    started = time.monotonic()
    response = post(client, scan_bomb())
    assert response.status_code == 422
    assert "too many JPEG scans" in response.json()["detail"]
    assert time.monotonic() - started < 5.0


def test_scans_are_counted_past_stuffing_restarts_and_segments():
    # Noise makes 0xFF data bytes (stuffed as 0xFF00), a restart marker follows every block, and
    # a comment holds the bytes of a hundred start-of-scan markers: none of them is a scan.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encode(
        Image.fromarray(noise),
        "JPEG",
        progressive=True,
        restart_marker_blocks=1,
        comment=b"\xff\xda" * 100,
    )
    assert jpeg.count(b"\xff\x00") and jpeg.count(b"\xff\xd0")
    preprocess.decode(jpeg)
    scans = jpeg.count(b"\xff\xda") - 100
    last_scan, end = jpeg.rfind(b"\xff\xda"), jpeg.rfind(b"\xff\xd9")
    extra = preprocess.MAX_JPEG_SCANS - scans
    at_limit = jpeg[:end] + jpeg[last_scan:end] * extra + jpeg[end:]
    assert preprocess.open_image(at_limit).size == (64, 64)
    over = jpeg[:end] + jpeg[last_scan:end] * (extra + 1) + jpeg[end:]
    with pytest.raises(ImageError, match="too many JPEG scans"):
        preprocess.open_image(over)


# --- 5. whatever a decoder raises is that file's one-line error ---------------------------------


PAGE = encode(page(), "PNG")
NARROW_PAGE = encode(page().resize((37, 40)), "PNG")


@pytest.fixture
def decoder_fails_on_width_37(monkeypatch):
    real_load = Image.Image.load

    def load(self):
        if self.size[0] == 37:
            raise RuntimeError("decoder state machine\nin a bad state")
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", load)


def test_a_decoder_error_fails_only_its_file_in_a_cli_batch(
    decoder_fails_on_width_37, tmp_path, capsys
):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, data in zip(paths, (PAGE, NARROW_PAGE, PAGE), strict=True):
        path.write_bytes(data)
    assert main(["recognize", *map(str, paths)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[1].endswith("b.png: error: cannot decode image (RuntimeError)"), lines
    assert "error" not in lines[0] and "error" not in lines[2]


def test_a_decoder_error_is_422_from_the_server(decoder_fails_on_width_37, client):
    response = post(client, NARROW_PAGE)
    assert response.status_code == 422
    assert response.json()["detail"] == "cannot decode image (RuntimeError)"
    assert post(client, PAGE).status_code == 200


def test_a_float_image_holding_nan_reads_as_finite_gray():
    values = np.full((8, 8), np.nan, np.float32)
    values[2:6, 2:6] = 0.5
    gray = preprocess.decode(encode(Image.fromarray(values, "F"), "PPM"))
    assert np.isfinite(gray).all()


# --- 6. large files are read in a process of their own, killed at a deadline --------------------


def sample_with_digits() -> bytes:
    return (Path(__file__).resolve().parents[1] / "examples" / "08-row-11865.png").read_bytes()


def test_small_files_are_read_without_starting_a_process(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(preprocess.subprocess, "run", never)
    assert len(preprocess.extract_or_error(sample_with_digits())) == 5


def test_a_large_file_is_read_in_its_own_process_with_the_same_result(monkeypatch):
    data = sample_with_digits()
    expected_stages: dict = {}
    expected = preprocess.extract_page(data, stages=expected_stages)
    isolated = []
    real = preprocess.extract_isolated

    def spy(data, stages=None, deadline_s=preprocess.DECODE_DEADLINE_S):
        isolated.append(len(data))
        return real(data, stages, deadline_s)

    monkeypatch.setattr(preprocess, "ISOLATE_BYTES", len(data) - 1)
    monkeypatch.setattr(preprocess, "extract_isolated", spy)
    stages: dict = {}
    page = preprocess.extract_or_error(data, stages, page=True)
    assert isolated == [len(data)]
    assert len(page.digits) == len(expected.digits) == 5
    for digit, reference in zip(page.digits, expected.digits, strict=True):
        for name in ("box", "line", "scale"):
            assert getattr(digit, name) == getattr(reference, name), name
        assert isinstance(digit.box[0], int)
        np.testing.assert_array_equal(digit.image, reference.image)
        np.testing.assert_array_equal(digit.ink, reference.ink)
    assert page.separators == expected.separators
    assert list(stages) == list(expected_stages)
    np.testing.assert_array_equal(stages["3-boxes"], expected_stages["3-boxes"])
    digits = preprocess.extract_or_error(data)
    assert [digit.box for digit in digits] == [digit.box for digit in expected.digits]


def test_a_file_past_its_deadline_is_killed_with_a_one_line_error():
    started = time.monotonic()
    with pytest.raises(ImageError, match="took over 0.01 s to read") as error:
        preprocess.extract_isolated(sample_with_digits(), deadline_s=0.01)
    assert_one_line(error)
    assert time.monotonic() - started < 3.0


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX signal")
def test_a_crashing_decoder_takes_only_its_own_process_down(tmp_path, monkeypatch):
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crashing))
    with pytest.raises(ImageError, match="decoder crashed \\(signal 11\\)"):
        preprocess.extract_isolated(sample_with_digits())
