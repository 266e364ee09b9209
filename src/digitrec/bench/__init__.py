"""The benchmarks: every figure the README quotes comes from one of these, as JSON.

- `training`: the recipes against the reference recipes, time to accuracy, and scaling over
  processes (`digitrec bench`);
- `realworld`: per-kind accuracy and files/s on MNIST test digits rendered as users' files
  (`digitrec bench realworld`);
- `inference`: PyTorch against ONNX Runtime, digits/s and cold start (`digitrec bench infer`);
- `serving`: requests/s and latency of `digitrec serve` driven by wrk (`digitrec bench serve`);
- `feedback`: a simulated writer's error after fine-tuning on their corrections
  (`digitrec bench feedback`);
- `commands`: the command line of each, over the modules above.

Benchmarks import the library; nothing in the library imports them.
"""

from __future__ import annotations

from typing import Any


def say(*args: Any, **kwargs: Any) -> None:
    print(*args, **kwargs, flush=True)


def comma_list(text: str | None) -> list[str]:
    """The items of a comma-separated option, blanks dropped ("a, b,,c": a, b, c; None: none)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
