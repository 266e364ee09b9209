"""The feedback store: images people confirmed or corrected, with what the model read in them.

Each record keeps the image as it was sent, the right text (the label), the model's answer, the
28x28 crops the model read with their boxes, and the digest of the model that read them, so a
fine-tune (`digitrec.finetune`) trains on exactly the pixels the model saw. A record whose label
has a different number of digits than the model found is kept, marked unusable with the reason.

One schema, two databases: SQLite by default (a file under $XDG_DATA_HOME/digitrec), in WAL mode
with a busy timeout so a server's writers and a fine-tune's reader never block each other, or
PostgreSQL given a ``postgresql://`` URL (needs ``pip install 'digitrec[feedback]'``). The
location is ``--feedback-db``, else $DIGITREC_FEEDBACK_DB, else the default file.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from digitrec import preprocess
from digitrec.checkpoint import ModelCard
from digitrec.data import DataError

ENV_VAR = "DIGITREC_FEEDBACK_DB"
LABEL_MAX_CHARS = 32
# The separators the reader writes between digits (see `preprocess.Separator`); a newline
# separates text lines.
LABEL_SEPARATORS = ".,-/:"
CROP_SHAPE = (preprocess.IMAGE_SIZE, preprocess.IMAGE_SIZE)
CROP_BYTES = CROP_SHAPE[0] * CROP_SHAPE[1]
# A writer waits this long for another writer's transaction before giving up: SQLite admits
# one writer at a time, and a record commits in well under a millisecond.
BUSY_TIMEOUT_S = 30.0
IDLE_CONNECTIONS = 8  # kept open for the next operation; more are opened when more run at once
READ_BATCH = 64  # records fetched per query while iterating, so memory does not grow with them
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class FeedbackError(DataError):
    """A label, record or store that cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class Mark:
    """One piece of the image the model read: a digit, or a mark it took for none."""

    box: tuple[int, int, int, int]  # x, y, width, height in the image's pixels
    digit: int  # what the model read
    not_digit: bool
    line: int
    pixels: np.ndarray = field(repr=False, compare=False)  # (28, 28) uint8: the model's input


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    created: str  # ISO 8601, UTC
    label: str  # the right text
    answer: str  # what the model read
    marks: tuple[Mark, ...]  # in reading order
    weights_sha256: str
    usable: bool
    reason: str  # why the record is not usable; "" when it is
    image: bytes = field(default=b"", repr=False)  # empty when read with images=False

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able values, without the image and the crops' pixels."""
        return {
            "id": self.id,
            "created": self.created,
            "label": self.label,
            "answer": self.answer,
            "usable": self.usable,
            "reason": self.reason,
            "weights_sha256": self.weights_sha256,
            "marks": [
                {"box": list(m.box), "digit": m.digit, "not_digit": m.not_digit, "line": m.line}
                for m in self.marks
            ],
        }

    def summary(self) -> str:
        """One line: "record 12: label 42, the model read 47 (not usable: ...)"."""
        usable = "" if self.usable else f" (not usable: {self.reason})"
        answer = _one_line(self.answer) or "no digit"
        return f"record {self.id}: label {_one_line(self.label)}, the model read {answer}{usable}"

    def pairs(self) -> list[tuple[np.ndarray, int]]:
        """(28x28 uint8 crop, right digit) for each digit of a usable record."""
        chosen = match_marks(self.label, self.marks)[0]
        if chosen is None:
            return []
        return [
            (mark.pixels, digit)
            for mark, digit in zip(chosen, label_digits(self.label), strict=True)
        ]


@dataclass
class DigitStats:
    labelled: int = 0  # digits of usable records with this right answer
    wrong: int = 0  # of those, how many the model read as another digit or as no digit


@dataclass
class FeedbackStats:
    records: int = 0
    usable: int = 0
    wrong_answers: int = 0  # records whose answer was not the label
    digits: dict[int, DigitStats] = field(
        default_factory=lambda: {d: DigitStats() for d in range(10)}
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "usable": self.usable,
            "wrong_answers": self.wrong_answers,
            "digits": {str(d): vars(s) for d, s in self.digits.items()},
        }


# --- labels and what the model read -------------------------------------------------------------


def check_label(text: str) -> str:
    """The label as stored (outer whitespace dropped, Windows line ends made plain), or a
    FeedbackError: at most 32 characters of digits and the separators . , - / : and newline,
    with at least one digit."""
    if not isinstance(text, str):
        raise FeedbackError("the label must be text")
    label = text.replace("\r\n", "\n").strip()
    if not label:
        raise FeedbackError("the label is empty: give the right number")
    if len(label) > LABEL_MAX_CHARS:
        raise FeedbackError(f"the label has {len(label)} characters; at most {LABEL_MAX_CHARS}")
    bad = sorted({c for c in label if not (c in "0123456789\n" or c in LABEL_SEPARATORS)})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5])
        raise FeedbackError(
            f"the label may hold only digits, {' '.join(LABEL_SEPARATORS)} and line breaks, "
            f"not {shown}"
        )
    if not any(c.isdigit() for c in label):
        raise FeedbackError("the label has no digit")
    return label


def label_digits(label: str) -> list[int]:
    return [int(c) for c in label if c in "0123456789"]


def match_marks(label: str, marks: tuple[Mark, ...]) -> tuple[tuple[Mark, ...] | None, str]:
    """(the marks that the label's digits name, in order; "") or (None, why not).

    Every mark pairs with a digit when the counts agree (a mark the model took for no digit may
    be one); otherwise the marks it read as digits, when their count agrees.
    """
    wanted = len(label_digits(label))
    if len(marks) == wanted:
        return marks, ""
    digits = tuple(mark for mark in marks if not mark.not_digit)
    if len(digits) == wanted:
        return digits, ""
    others = len(marks) - len(digits)
    found = f"{len(digits)} digit{'s' * (len(digits) != 1)}"
    if others:
        found += f" and {others} other mark{'s' * (others != 1)}"
    return None, f"the label has {wanted} digit{'s' * (wanted != 1)} but the model found {found}"


def marks_of(result: Any) -> tuple[Mark, ...]:
    """The marks of a `recognize.ImageResult`, in reading order (line by line, left to right),
    each with the 28x28 input the model saw as uint8."""
    digits = sorted(result.digits, key=lambda d: (d.line, d.box[0]))
    return tuple(
        Mark(
            box=tuple(int(v) for v in d.box),
            digit=int(d.digit),
            not_digit=bool(d.not_digit),
            line=int(d.line),
            pixels=to_uint8(d.image),
        )
        for d in digits
    )


def to_uint8(image: np.ndarray | None) -> np.ndarray:
    """A 28x28 model input (float 0..1) as uint8, rounded as the rest of the package rounds."""
    if image is None:
        return np.zeros(CROP_SHAPE, np.uint8)
    pixels = np.asarray(image, dtype=np.float32).reshape(CROP_SHAPE)
    return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)


def answer_of(result: Any) -> str:
    return result.full_text if result.full_text is not None else (result.number or "")


def weights_digest(card: ModelCard) -> str:
    """The digest of a model's weights (`tensors_sha256`): the same whether PyTorch or the
    exported ONNX file reads them."""
    return card.tensors_sha256 or card.model_sha256 or ""


# --- where the store lives ----------------------------------------------------------------------


def default_location() -> Path:
    """$XDG_DATA_HOME/digitrec/feedback.db, default ~/.local/share/digitrec/feedback.db."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "digitrec" / "feedback.db"


def resolve_location(location: str | os.PathLike | None = None) -> str:
    """The store to use: ``location``, else $DIGITREC_FEEDBACK_DB, else the default file."""
    return str(location or os.environ.get(ENV_VAR) or default_location())


def is_postgres(location: str) -> bool:
    return location.startswith(POSTGRES_SCHEMES)


def describe(location: str) -> str:
    """The location, with a URL's password hidden, for messages."""
    if not is_postgres(location):
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# --- the two databases --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases: parameter style, column types, schema locking.

    Queries are written once with ``?`` placeholders; `sql` turns them into the driver's style.
    """

    placeholder: str
    begin: str  # starts the transaction that creates the schema
    schema: tuple[str, ...]

    def sql(self, query: str) -> str:
        return query if self.placeholder == "?" else query.replace("?", self.placeholder)


COLUMNS = "id, created, label, answer, marks, crops, weights_sha256, usable, reason"
_TABLE = """CREATE TABLE IF NOT EXISTS feedback (
    id {id} PRIMARY KEY,
    created TEXT NOT NULL,
    image {blob} NOT NULL,
    label TEXT NOT NULL,
    answer TEXT NOT NULL,
    marks TEXT NOT NULL,
    crops {blob} NOT NULL,
    weights_sha256 TEXT NOT NULL,
    usable {boolean} NOT NULL,
    reason TEXT NOT NULL
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS feedback_usable ON feedback (usable, id)"

SQLITE = Dialect(
    placeholder="?",
    begin="BEGIN IMMEDIATE",
    # AUTOINCREMENT: a deleted record's id is never given to another (fine-tuned models list
    # the ids they were trained on).
    schema=(
        _TABLE.format(id="INTEGER", blob="BLOB", boolean="INTEGER").replace(
            "PRIMARY KEY", "PRIMARY KEY AUTOINCREMENT", 1
        ),
        _INDEX,
    ),
)
POSTGRES = Dialect(
    placeholder="%s",
    begin="BEGIN",
    # The lock keeps two processes creating the table at once from colliding in the catalog.
    schema=(
        "SELECT pg_advisory_xact_lock(7308257240)",
        _TABLE.format(id="BIGINT GENERATED ALWAYS AS IDENTITY", blob="BYTEA", boolean="BOOLEAN"),
        _INDEX,
    ),
)


def _connect_sqlite(path: str) -> Callable[[], Any]:
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)

    def connect() -> Any:
        connection = sqlite3.connect(
            Path(path).expanduser(),
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,  # a pooled connection serves one thread at a time
        )
        # WAL: readers and the one writer never wait for each other. NORMAL sync in WAL mode
        # keeps the file consistent; a power cut may lose only the last commits.
        _turn_on_wal(connection)
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def _turn_on_wal(connection: sqlite3.Connection) -> None:
    """WAL mode, waiting as a writer waits for another connection switching it at this moment.

    SQLite answers "database is locked" at once, without its busy timeout, while another
    connection holds the lock that the switch takes: several threads opening a new file together
    meet exactly that.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.005)


def _connect_postgres(url: str) -> Callable[[], Any]:
    try:
        import psycopg
    except ModuleNotFoundError:
        raise FeedbackError(
            "a postgresql:// feedback store needs psycopg, which is not installed: "
            "pip install 'digitrec[feedback]'"
        ) from None

    def connect() -> Any:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)

    return connect


def _database_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ModuleNotFoundError:
        pass
    return tuple(errors)


class FeedbackStore:
    """Feedback records in SQLite or PostgreSQL; safe to share between threads.

    Each operation borrows a connection from a small pool and runs as one transaction, so
    writers in many threads (a server's) and processes (a fine-tune's reader) work at once.
    """

    def __init__(self, location: str | os.PathLike | None = None) -> None:
        self.location = resolve_location(location)
        postgres = is_postgres(self.location)
        self.dialect = POSTGRES if postgres else SQLITE
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._connect = (_connect_postgres if postgres else _connect_sqlite)(self.location)
            with self._connection() as connection:
                self._create_schema(connection)
        except _database_errors() as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise FeedbackError(
                f"cannot open the feedback store {describe(self.location)}: {first}"
            ) from None

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        try:
            yield connection
        except BaseException:
            connection.close()  # it may be mid-transaction or broken: never reuse it
            raise
        with self._lock:
            if not self._closed and len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def _create_schema(self, connection: Any) -> None:
        connection.execute(self.dialect.begin)
        try:
            for statement in self.dialect.schema:
                connection.execute(statement)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _execute(self, query: str, parameters: tuple = ()) -> tuple[list[tuple], int]:
        """(rows, rows changed) of one statement, run as its own transaction."""
        with self._connection() as connection:
            cursor = connection.execute(self.dialect.sql(query), parameters)
            rows = cursor.fetchall() if cursor.description is not None else []
            changed = cursor.rowcount
            cursor.close()
        return rows, changed

    def add(self, image: bytes, label: str, result: Any, weights_sha256: str) -> FeedbackRecord:
        """Store ``image`` (encoded bytes), its right text and what the model read in it
        (``result``, the `recognize.ImageResult` of these very bytes) as a new record.

        Raises FeedbackError for a bad label and ImageError for bytes that are not an image
        `digitrec recognize` would read (too large, unknown format, a decompression bomb).
        """
        label = check_label(label)
        image = bytes(image)
        preprocess.open_image(image)  # the header checks of every read, without the decode
        if getattr(result, "error", None) is not None:
            raise preprocess.ImageError(result.error)
        marks = marks_of(result)
        chosen, reason = match_marks(label, marks)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        values = (
            created,
            image,
            label,
            answer_of(result),
            _marks_json(marks),
            b"".join(m.pixels.tobytes() for m in marks),
            weights_sha256,
            chosen is not None,
            reason,
        )
        rows, _ = self._execute(
            "INSERT INTO feedback (created, image, label, answer, marks, crops, weights_sha256, "
            "usable, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            values,
        )
        return FeedbackRecord(
            int(rows[0][0]),
            created,
            label,
            values[3],
            marks,
            weights_sha256,
            chosen is not None,
            reason,
            image,
        )

    def get(self, record_id: int) -> FeedbackRecord | None:
        rows, _ = self._execute(
            f"SELECT {COLUMNS}, image FROM feedback WHERE id = ?", (int(record_id),)
        )
        return _record(rows[0], rows[0][-1]) if rows else None

    def delete(self, record_id: int) -> bool:
        """Remove a record; False when there was none with this id."""
        _, changed = self._execute("DELETE FROM feedback WHERE id = ?", (int(record_id),))
        return changed > 0

    def count(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM feedback")[0][0][0])

    def records(
        self, usable: bool | None = None, until_id: int | None = None, images: bool = True
    ) -> Iterator[FeedbackRecord]:
        """Every record in id order (only usable or unusable ones when ``usable`` is given, none
        past ``until_id``), fetched a batch at a time; ``images=False`` leaves image empty."""
        conditions, parameters = ["id > ?"], []
        if usable is not None:
            conditions.append("usable = ?")
            parameters.append(usable)
        if until_id is not None:
            conditions.append("id <= ?")
            parameters.append(int(until_id))
        image = ", image" if images else ""
        query = (
            f"SELECT {COLUMNS}{image} FROM feedback WHERE {' AND '.join(conditions)} "
            f"ORDER BY id LIMIT {READ_BATCH}"
        )
        last = 0
        while True:
            rows, _ = self._execute(query, (last, *parameters))
            for row in rows:
                yield _record(row, row[-1] if images else b"")
            if len(rows) < READ_BATCH:
                return
            last = int(rows[-1][0])

    def latest(self, limit: int = 20) -> list[FeedbackRecord]:
        """The newest ``limit`` records, newest first, without their images."""
        rows, _ = self._execute(
            f"SELECT {COLUMNS} FROM feedback ORDER BY id DESC LIMIT ?", (int(limit),)
        )
        return [_record(row, b"") for row in rows]

    def stats(self) -> FeedbackStats:
        """Records, usable ones, wrong answers, and per digit how often the model misread it."""
        stats = FeedbackStats()
        for record in self.records(images=False):
            stats.records += 1
            stats.wrong_answers += record.answer != record.label
            if not record.usable:
                continue
            stats.usable += 1
            chosen = match_marks(record.label, record.marks)[0] or ()
            for mark, digit in zip(chosen, label_digits(record.label), strict=True):
                stats.digits[digit].labelled += 1
                stats.digits[digit].wrong += mark.not_digit or mark.digit != digit
        return stats


def _marks_json(marks: tuple[Mark, ...]) -> str:
    return json.dumps(
        [
            {"box": list(m.box), "digit": m.digit, "not_digit": m.not_digit, "line": m.line}
            for m in marks
        ],
        separators=(",", ":"),
    )


def _record(row: tuple, image: bytes) -> FeedbackRecord:
    record_id, created, label, answer, marks_json, crops, weights_sha256, usable, reason = row[:9]
    crops = bytes(crops)
    described = json.loads(marks_json)
    if len(crops) != CROP_BYTES * len(described):
        raise FeedbackError(
            f"feedback record {record_id} is damaged: its crops do not match its marks"
        )
    pixels = np.frombuffer(crops, np.uint8).reshape(-1, *CROP_SHAPE)
    marks = tuple(
        Mark(tuple(m["box"]), int(m["digit"]), bool(m["not_digit"]), int(m["line"]), pixels[i])
        for i, m in enumerate(described)
    )
    return FeedbackRecord(
        int(record_id),
        str(created),
        label,
        answer,
        marks,
        weights_sha256,
        bool(usable),
        reason,
        bytes(image),
    )


def open_store(location: str | os.PathLike | None = None) -> FeedbackStore:
    """The store at ``location`` (a path or postgresql:// URL), $DIGITREC_FEEDBACK_DB, or the
    default file; created when missing."""
    return FeedbackStore(location)


def record(store: FeedbackStore, recognizer: Any, image: Any, label: str) -> FeedbackRecord:
    """Read ``image`` (anything `inputs.as_bytes` takes) with ``recognizer`` and store it with
    its right text ``label``. The label is checked first, so a bad one costs no reading."""
    from digitrec.inputs import as_bytes

    label = check_label(label)
    data = as_bytes(image)
    result = recognizer.recognize(data)
    if result.error is not None:
        raise preprocess.ImageError(result.error)
    return store.add(data, label, result, weights_digest(recognizer.card))


# --- export and tables --------------------------------------------------------------------------

IMAGE_EXTENSIONS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "PPM": ".pnm",
}
EXPORT_FIELDS = ("id", "file", "label", "answer", "usable", "reason", "weights_sha256", "created")


def export(store: FeedbackStore, folder: str | os.PathLike) -> Path:
    """Write every record's image as ``folder/<id>.<ext>`` and a ``labels.csv`` listing them
    (id, file, label, answer, usable, reason, weights_sha256, created); returns the CSV's path."""
    from digitrec.checkpoint import write_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in store.records():
        name = f"{item.id:06d}{_extension(item.image)}"
        (folder / name).write_bytes(item.image)
        rows.append(
            {
                "id": item.id,
                "file": name,
                "label": item.label,
                "answer": item.answer,
                "usable": int(item.usable),
                "reason": item.reason,
                "weights_sha256": item.weights_sha256,
                "created": item.created,
            }
        )

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, EXPORT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    path = folder / "labels.csv"
    write_atomic(path, write)
    return path


def _extension(image: bytes) -> str:
    try:
        return IMAGE_EXTENSIONS.get(preprocess.open_image(image).format or "", ".bin")
    except preprocess.ImageError:
        return ".bin"


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def list_table(records: list[FeedbackRecord]) -> str:
    """Records as a table, one line each."""
    lines = [f"{'id':>6} {'created':25} {'label':>12} {'answer':>12} {'model':12} usable"]
    for item in records:
        usable = "yes" if item.usable else f"no: {item.reason}"
        lines.append(
            f"{item.id:>6} {item.created:25} {_one_line(item.label):>12} "
            f"{_one_line(item.answer) or '-':>12} {item.weights_sha256[:12]:12} "
            f"{usable}"
        )
    return "\n".join(lines)


def stats_table(stats: FeedbackStats) -> str:
    """The stats as text: totals, then one row per digit."""
    lines = [
        f"{stats.records} records, {stats.usable} usable; the model's answer was wrong in "
        f"{stats.wrong_answers} ({_percent(stats.wrong_answers, stats.records)})",
        f"{'digit':>5} {'labelled':>8} {'misread':>8} {'misread %':>9}",
    ]
    for digit, each in stats.digits.items():
        lines.append(
            f"{digit:>5} {each.labelled:>8} {each.wrong:>8} "
            f"{_percent(each.wrong, each.labelled):>9}"
        )
    return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
