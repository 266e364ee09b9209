"""Fuzzing of the image reader: every input must be read or refused with an ImageError, quickly.

`hostile_corpus` builds the seed files: the attacks the reader defends against (a progressive
JPEG repeating a scan, a PNG padded to pass for honest, an ICO around a big PNG, floods of chunks
and markers, headers of formats that are not read, absurd and zero sizes) and small valid files
of every format, each whole, truncated and with flipped bytes. `mutate` derives every further
input from a seed with a random generator seeded by (seed, index), so any input of any run can
be rebuilt from its index alone. `run` feeds the inputs to `preprocess.extract_digits` and
reports the slowest and every failure: an exception other than ImageError, or more than
TIME_LIMIT_S of CPU. `tools/fuzz.py` is the command line (`make fuzz`).

A mutation fuzzer rather than hypothesis or atheris: the seeds already hold the structure that
matters, a run of a million inputs must cost little per input, and an input is named by a seed
and an index instead of a database of examples.
"""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from digitrec import preprocess

TIME_LIMIT_S = 2.0
# Values on the edges of header fields (sizes, counts, lengths, offsets), written over them.
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x4000, 0x7FFF, 0x8000, 0xFFFF)
INTERESTING_WIDE = (0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
# Half of the mutations land in a file's first bytes, where its header holds sizes and lengths.
HEADER_BYTES = 64
# Repeating a stretch of a file is how scan and chunk floods are built; this keeps them bounded.
MAX_INPUT_BYTES = 2 * 2**20


@dataclass(frozen=True)
class Failure:
    """An input the reader failed on, with what it did."""

    index: int
    seed_name: str
    problem: str
    data: bytes


@dataclass
class Report:
    """What a run of the fuzzer saw. Times are CPU seconds of this process, per input."""

    inputs: int = 0
    read: int = 0
    refused: int = 0
    wall_seconds: float = 0.0
    slowest_seconds: float = 0.0
    slowest_index: int = -1
    slowest_seed: str = ""
    failures: list[Failure] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Inputs per second of wall-clock time."""
        return self.inputs / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def merge(self, other: Report) -> None:
        """Add another part of the same run (other indices) into this report."""
        self.inputs += other.inputs
        self.read += other.read
        self.refused += other.refused
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        if other.slowest_seconds > self.slowest_seconds:
            self.slowest_seconds = other.slowest_seconds
            self.slowest_index, self.slowest_seed = other.slowest_index, other.slowest_seed
        self.failures.extend(other.failures)


def run(
    count: int,
    seed: int = 0,
    start: int = 0,
    corpus: dict[str, bytes] | None = None,
    time_limit_s: float = TIME_LIMIT_S,
    progress: Callable[[Report], None] | None = None,
    progress_every: int = 10_000,
) -> Report:
    """Feed inputs ``start .. start + count - 1`` to the reader; the first inputs of a run are
    the seeds themselves, the rest mutations of them. ``progress`` is called with the report
    every ``progress_every`` inputs."""
    corpus = hostile_corpus() if corpus is None else corpus
    names = sorted(corpus)
    report = Report()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged files make Pillow warn; only outcomes count
        for index in range(start, start + count):
            name, data = fuzz_input(corpus, names, index, seed)
            cpu = time.process_time()
            problem = _problem(data)
            spent = time.process_time() - cpu
            report.inputs += 1
            if spent > report.slowest_seconds:
                report.slowest_seconds = spent
                report.slowest_index, report.slowest_seed = index, name
            if problem is None:
                report.read += 1
            elif problem == "refused":
                report.refused += 1
            if spent > time_limit_s:
                problem = f"took {spent:.2f} s of CPU (limit {time_limit_s:g} s)"
            if problem not in (None, "refused"):
                report.failures.append(Failure(index, name, problem, data))
            if progress is not None and report.inputs % progress_every == 0:
                report.wall_seconds = time.perf_counter() - started
                progress(report)
    report.wall_seconds = time.perf_counter() - started
    return report


def fuzz_input(
    corpus: dict[str, bytes], names: Sequence[str], index: int, seed: int
) -> tuple[str, bytes]:
    """Input ``index`` of the run ``seed`` over ``corpus`` (whose sorted names are ``names``):
    the seed file itself for the first indices, then a mutation of one."""
    if index < len(names):
        return names[index], corpus[names[index]]
    rng = random.Random(f"{seed}:{index}")
    name = rng.choice(names)
    donors = [corpus[other] for other in names]
    return name, mutate(corpus[name], donors, rng)


def mutate(data: bytes, donors: Sequence[bytes], rng: random.Random) -> bytes:
    """A few random edits of ``data``: flipped bits, edge values over header fields, cuts,
    repeats, insertions and splices with a donor file. PNG checksums are often repaired
    afterwards, so that the edits reach the decoder instead of stopping at the CRC check."""
    buffer = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 6))):
        rng.choice(MUTATIONS)(buffer, donors, rng)
    del buffer[MAX_INPUT_BYTES:]
    if buffer.startswith(preprocess.PNG_SIGNATURE) and rng.random() < 0.5:
        _repair_png_checksums(buffer)
    return bytes(buffer)


def _problem(data: bytes) -> str | None:
    """None if the reader read ``data``, "refused" for an ImageError, else what went wrong."""
    try:
        preprocess.extract_digits(data)
    except preprocess.ImageError as error:
        message = str(error)
        if not message or "\n" in message:
            return f"ImageError message is not one line: {message!r}"
        return "refused"
    except Exception as error:  # the reader's contract is ImageError and nothing else
        first = (str(error).splitlines() or [""])[0][:200]
        return f"{type(error).__name__}: {first}"
    return None


# --- mutations: each edits a buffer in place ----------------------------------------------------


def _position(buffer: bytearray, rng: random.Random) -> int:
    if not buffer:
        return 0
    if rng.random() < 0.5:
        return rng.randrange(min(len(buffer), HEADER_BYTES))
    return rng.randrange(len(buffer))


def _flip_bit(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    if buffer:
        buffer[_position(buffer, rng)] ^= 1 << rng.randrange(8)


def _set_byte(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    if buffer:
        buffer[_position(buffer, rng)] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))


def _set_integer(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    width = rng.choice((2, 4))
    position = _position(buffer, rng)
    if position + width > len(buffer):
        return
    values = INTERESTING + (INTERESTING_WIDE if width == 4 else ())
    value = rng.choice(values) & ((1 << (8 * width)) - 1)
    buffer[position : position + width] = value.to_bytes(width, rng.choice(("big", "little")))


def _truncate(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    del buffer[rng.randrange(len(buffer) + 1) :]


def _delete_range(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    position = _position(buffer, rng)
    del buffer[position : position + rng.randrange(1, 65)]


def _repeat_range(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    position = _position(buffer, rng)
    piece = bytes(buffer[position : position + rng.randrange(1, 513)])
    copies = rng.choice((1, 2, 8, 64, 500))
    room = max(0, MAX_INPUT_BYTES - len(buffer)) // max(len(piece), 1)
    buffer[position:position] = piece * min(copies, room)


def _insert_random(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    position = _position(buffer, rng)
    buffer[position:position] = rng.randbytes(rng.randrange(1, 33))


def _splice(buffer: bytearray, donors: Sequence[bytes], rng: random.Random) -> None:
    donor = rng.choice(donors)
    buffer[_position(buffer, rng) :] = donor[rng.randrange(len(donor) + 1) :]


MUTATIONS = (
    _flip_bit,
    _set_byte,
    _set_integer,
    _truncate,
    _delete_range,
    _repeat_range,
    _insert_random,
    _splice,
)


def _repair_png_checksums(buffer: bytearray) -> None:
    """Recompute the CRC of every whole chunk of a PNG."""
    position = len(preprocess.PNG_SIGNATURE)
    while position + 12 <= len(buffer):
        length = struct.unpack_from(">I", buffer, position)[0]
        end = position + 8 + length
        if end + 4 > len(buffer):
            return
        struct.pack_into(">I", buffer, end, zlib.crc32(buffer[position + 4 : end]) & 0xFFFFFFFF)
        position = end + 4


# --- the corpus ---------------------------------------------------------------------------------


def hostile_corpus() -> dict[str, bytes]:
    """The seed files, by name: the attacks, then every valid sample whole, cut in half, cut
    after its header, and with eight bytes flipped."""
    corpus = dict(attacks())
    for name, data in valid_samples().items():
        rng = random.Random(name)
        flipped = bytearray(data)
        for _ in range(8):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        corpus[name] = data
        corpus[f"{name}-truncated"] = data[: len(data) // 2]
        corpus[f"{name}-header-only"] = data[:40]
        corpus[f"{name}-flipped"] = bytes(flipped)
    return corpus


def attacks() -> dict[str, bytes]:
    """Files built to hang, exhaust or fool an image reader, each small."""
    inner_png = _encode(Image.new("L", (4000, 4000), 255), "PNG")
    return {
        "jpeg-scan-bomb": scan_bomb(1024, repeats=500),
        "jpeg-marker-flood": b"\xff\xd8" + b"\xff\xfe\x00\x02" * 60_000 + _small_jpeg()[2:],
        "png-padded-bomb": pad_png(blank_png(4100, 4100), 100_000),
        "png-chunk-flood": _insert_chunks(_small_png(), _chunk(b"teXt", b"") * 60_000),
        "png-huge-header": blank_png(1, 1, claimed=(100_000, 100_000)),
        "png-zero-width": blank_png(1, 1, claimed=(0, 10)),
        "ico-holding-a-big-png": _ico(inner_png),
        "eps-header": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9999 9999\nshowpage\n",
        "psd-header": b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 1, 9999, 9999, 8, 1),
        "avif-like-header": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(48),
        "heic-like-header": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(48),
        "gif-huge-screen": _gif(screen=(65535, 65535)),
        "gif-zero-size": _gif(screen=(0, 0)),
        "gif-block-flood": _gif(extension=b"\x21\xfe" + b"\x01a" * 200_000 + b"\x00"),
        "bmp-huge-header": _bmp_claiming(30_000, -30_000),
        "tiff-huge-header": _tiff(60_000, 60_000),
        "tiff-zero-size": _tiff(0, 0),
        "webp-huge-header": _webp_claiming(16_384, 16_384),
        "pgm-huge-header": b"P5\n60000 60000\n255\n" + bytes(64),
        "pgm-plain": b"P2\n300 300\n255\n" + b"128 " * 90_000,
        "pfm-nan": b"Pf\n4 4\n-1.0\n" + struct.pack("<f", float("nan")) * 16,
        "empty": b"",
        "text": b"hello, this is a text file named digit.png\n",
    }


def valid_samples() -> dict[str, bytes]:
    """Small valid files of every format read, and of the variants decoders treat apart."""
    gray = _page()
    rgb = gray.convert("RGB")
    rgba = np.zeros((*gray.size[::-1], 4), np.uint8)
    rgba[:, :, 3] = 255 - np.asarray(gray)  # ink in the alpha channel only
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by a phone
    palette = gray.convert("P")
    return {
        "png-gray": _encode(gray, "PNG"),
        "png-rgba": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "png-16bit": _encode(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG"),
        "png-palette": _encode(palette, "PNG", transparency=0),
        "png-animated": _encode(gray, "PNG", save_all=True, append_images=[rgb.convert("L")]),
        "jpeg": _encode(rgb, "JPEG"),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-rotated": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-restarts": _encode(gray, "JPEG", restart_marker_blocks=1),
        "mpo": _encode(rgb, "MPO", save_all=True, append_images=[rgb]),
        "gif": _encode(palette, "GIF"),
        "gif-animated": _encode(palette, "GIF", save_all=True, append_images=[palette]),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-lzw": _encode(gray, "TIFF", compression="tiff_lzw"),
        "tiff-jpeg": _encode(rgb, "TIFF", compression="jpeg"),
        "tiff-multi-frame": _encode(gray, "TIFF", save_all=True, append_images=[gray]),
        "webp-lossy": _encode(rgb, "WEBP"),
        "webp-lossless": _encode(rgb, "WEBP", lossless=True),
        "webp-animated": _encode(rgb, "WEBP", save_all=True, append_images=[rgb]),
        "ppm": _encode(rgb, "PPM"),
        "pgm": _encode(gray, "PPM"),
        "pbm": _encode(gray.convert("1"), "PPM"),
    }


def scan_bomb(side: int, repeats: int) -> bytes:
    """A blank progressive JPEG whose last scan is repeated ``repeats`` times before its end."""
    jpeg = _encode(Image.new("L", (side, side), 255), "JPEG", progressive=True)
    last_scan, end = jpeg.rfind(b"\xff\xda"), jpeg.rfind(b"\xff\xd9")
    return jpeg[:end] + jpeg[last_scan:end] * repeats + jpeg[end:]


def blank_png(width: int, height: int, claimed: tuple[int, int] | None = None) -> bytes:
    """A white 8-bit gray PNG compressed row by row; its header may claim another size."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * width  # filter type 0, then the pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    claimed_width, claimed_height = claimed or (width, height)
    header = struct.pack(">IIBBBBB", claimed_width, claimed_height, 8, 0, 0, 0, 0)
    return (
        preprocess.PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )


def pad_png(png: bytes, size: int) -> bytes:
    """A PNG padded to ``size`` bytes by an ancillary chunk of zeros after its header."""
    return _insert_chunks(png, _chunk(b"juNk", bytes(max(0, size - len(png) - 12))))


def _encode(image: Image.Image, file_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def _page() -> Image.Image:
    """A 48x32 light page with a dark stroke: quick to read, yet it holds a digit-like mark."""
    pixels = np.full((32, 48), 230, np.uint8)
    pixels[6:26, 21:26] = 20
    return Image.fromarray(pixels)


def _small_png() -> bytes:
    return _encode(_page(), "PNG")


def _small_jpeg() -> bytes:
    return _encode(_page(), "JPEG")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _insert_chunks(png: bytes, chunks: bytes) -> bytes:
    """``chunks`` inserted right after a PNG's IHDR chunk."""
    after_header = len(preprocess.PNG_SIGNATURE) + 25
    return png[:after_header] + chunks + png[after_header:]


def _ico(png: bytes) -> bytes:
    """An ICO file whose one entry is ``png``."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def _gif(screen: tuple[int, int] | None = None, extension: bytes = b"") -> bytes:
    """A small real GIF, its screen size patched to ``screen``, ``extension`` before its frame."""
    gif = bytearray(_encode(_page().convert("P"), "GIF"))
    if screen is not None:
        gif[6:10] = struct.pack("<HH", *screen)
    flags = gif[10]
    colour_table = 3 << ((flags & 7) + 1) if flags & 0x80 else 0
    after_header = 13 + colour_table
    return bytes(gif[:after_header]) + extension + bytes(gif[after_header:])


def _bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming width x height (negative: top-down), with 64 pixel bytes."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 14 + 40) + info + bytes(64)


def _tiff(width: int, height: int) -> bytes:
    """An 8-bit gray TIFF claiming width x height, with a strip of 64 bytes."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: right after the directory
        (278, 4, 1, max(height, 1)),  # RowsPerStrip
        (279, 4, 1, 64),  # StripByteCounts
    ]
    directory = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        field_value = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        directory += struct.pack("<HHI", tag, kind, count) + field_value
    return b"II*\x00" + struct.pack("<I", 8) + directory + struct.pack("<I", 0) + bytes(64)


def _webp_claiming(width: int, height: int) -> bytes:
    """A small real WebP behind an extended (VP8X) header claiming a width x height canvas."""
    webp = _encode(_page().convert("RGB"), "WEBP")
    extended = b"VP8X" + struct.pack("<I", 10) + bytes(4)
    extended += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + extended + webp[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body
