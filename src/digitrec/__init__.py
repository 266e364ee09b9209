"""digitrec: recognize handwritten digits.

`import digitrec` is light: it imports neither torch nor matplotlib. `Recognizer` is loaded on
first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Recognizer", "ImageResult", "DigitResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Recognizer", "ImageResult", "DigitResult"):
        from digitrec import recognize

        return getattr(recognize, name)
    raise AttributeError(f"module 'digitrec' has no attribute {name!r}")
