"""Images in whatever form a caller holds them, as the encoded bytes recognition reads.

`as_bytes` accepts a file path, bytes, a binary file object, a PIL image or a numpy array (gray
or RGB/RGBA, uint8 or float 0..1). Files and bytes pass through unchanged, so the decoder's own
checks (formats, size, decompression bombs) still see the original; pictures held in memory are
encoded as lossless PNG, so the model reads exactly the pixels it was given.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from digitrec.preprocess import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    read_bytes,
    too_large_message,
    too_many_pixels_message,
)

# What each trailing dimension of an array means: (H, W) gray, (H, W, 1) gray, (H, W, 3) RGB,
# (H, W, 4) RGBA.
ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Any


def as_bytes(source: ImageSource) -> bytes:
    """The encoded image bytes of ``source``.

    - a path (str or os.PathLike): the file's bytes, read as `digitrec recognize` reads it;
    - bytes, bytearray or memoryview: as they are;
    - a binary file object (anything with ``read``): read to its end;
    - a PIL image: encoded as PNG;
    - a numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, bool, or floats in
      0..1: encoded as PNG.
    Raises ImageError for an empty, oversized or unusable picture and TypeError for any
    other kind of object.
    """
    if isinstance(source, str | os.PathLike):
        return read_bytes(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_encoded(data)
        return data
    if isinstance(source, np.ndarray):
        return array_png(source)
    if _is_pil_image(source):
        return pil_png(source)
    if callable(getattr(source, "read", None)):
        return _read_stream(source)
    raise TypeError(
        f"cannot read an image from a {type(source).__name__}: pass a path, bytes, a binary "
        "file, a PIL image or a numpy array"
    )


def array_png(array: np.ndarray) -> bytes:
    """A gray or colour picture held as an array, as PNG bytes (see `as_bytes`)."""
    if array.ndim == 3 and array.shape[2] in ARRAY_MODES:
        mode = ARRAY_MODES[array.shape[2]]
        if mode == "L":
            array = array[:, :, 0]
    elif array.ndim == 2:
        mode = "L"
    else:
        raise ImageError(
            f"an image array must be (H, W) gray or (H, W, 3) RGB or (H, W, 4) RGBA, "
            f"not {array.shape}"
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageError("image has no pixels")
    if height * width > MAX_PIXELS:
        raise ImageError(too_many_pixels_message(width, height))
    from PIL import Image

    return _png(Image.fromarray(_to_uint8(array), mode))


def pil_png(image: Any) -> bytes:
    """A PIL image as PNG bytes; modes PNG cannot hold (CMYK, float) go through RGB or gray."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError("image has no pixels")
    if width * height > MAX_PIXELS:
        raise ImageError(too_many_pixels_message(width, height))
    if image.mode in ("F", "I"):
        # 32-bit pixels: through the array path, which checks their range.
        return array_png(np.asarray(image))
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        image = image.convert("RGB")
    return _png(image)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixels 0..255 as uint8: uint8 as is, bool as 0 or 255, floats scaled from 0..1."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError("image array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(
                f"a float image array must hold values in 0..1, not {low:g}..{high:g} "
                "(pass uint8 for 0..255)"
            )
        # The same rounding as every 0..1 -> 0..255 step in this package.
        return np.clip(array.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ImageError(
        f"an image array must be uint8, bool or float 0..1, not {array.dtype} "
        "(scale other integer types to uint8 first)"
    )


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    # Level 1: a picture in memory is encoded to be decoded at once, not to be kept.
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _is_pil_image(source: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(source, Image.Image)


def _read_stream(stream: Any) -> bytes:
    """A binary file object read to its end, refused past the decoder's file size limit."""
    data = stream.read(MAX_FILE_BYTES + 1)
    if isinstance(data, str):
        raise TypeError("the file object is open in text mode: open it with 'rb'")
    data = bytes(data or b"")
    _check_encoded(data)
    return data


def _check_encoded(data: bytes) -> None:
    if not data:
        raise ImageError("empty image data")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(too_large_message(len(data)))
