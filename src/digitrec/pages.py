"""Self-contained HTML pages (the evaluation report, the explanations): one file each, every
figure inlined as a data URI, so a page can be mailed or opened offline."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f6f6f6; } td:first-child, th:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { background: #fff8e1; border-left: 4px solid #ffb300; padding: 0.5em 0.8em; }
"""


def data_uri(path: str | os.PathLike) -> str:
    """A PNG file as a data: URI, so the page needs no other file."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def figure_html(path: str | os.PathLike, caption: str) -> str:
    """An embedded figure; `caption` is HTML."""
    alt = html.escape(Path(path).stem.replace("-", " "))
    return (
        f'<figure><img src="{data_uri(path)}" alt="{alt}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def write_html(path: str | os.PathLike, title: str, body: str) -> Path:
    path = Path(path)
    path.write_text(html_page(title, body), encoding="utf-8")
    return path
