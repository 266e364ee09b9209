"""Run directories and self-describing checkpoints (safetensors + a JSON model card).

A run directory holds:
- `model.safetensors`: the best-on-validation weights; its metadata carries the model card, so
  the file alone rebuilds the model;
- `model.json`: the same card, readable (model name and settings, normalisation, dataset and its
  digests, recipe, metrics, date);
- `history.json`: per-epoch metrics;
- `last.safetensors`: the latest training state (weights, optimizer, scheduler, RNG, epoch and
  step, config and data settings) for `digitrec train --resume`, written every
  `TrainConfig.checkpoint_every` steps and at each epoch's end.
Every file is written to a temporary name, flushed to disk and renamed, so a kill or a power cut
at any moment leaves the previous complete file in place. Both kinds of safetensors file carry a
SHA-256 over everything in them (tensors and JSON), checked on every load: a damaged file is
refused, never half used. Nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
HISTORY_FILE = "history.json"
STATE_FILE = "last.safetensors"
# 2: the card carries `model_sha256`, a digest over the whole card (and so the weights' digest).
FORMAT_VERSION = 2


class ModelError(ValueError):
    """A model file that cannot be used: missing, corrupt, or failing its shape/digest checks."""


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), flush tmp_path to disk, then rename it over `path` in one step.

    Without the fsync a power cut shortly after the rename can leave `path` empty or partly
    written: filesystems may commit the rename before the data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide models from other users
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # the rename itself lives in the directory; Windows cannot open one
        _fsync(path.parent)


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(data, indent=2, default=_json_default) + "\n")

    write_atomic(path, write)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def tensors_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the tensors' names, shapes and bytes, in sorted order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def card_digest(card: dict[str, Any]) -> str:
    """SHA-256 of the card's canonical JSON (sorted keys, no spaces) without `model_sha256`.

    The card holds `tensors_sha256`, so this one digest covers the whole model: weights,
    temperature, classes, normalisation. Computed on the card as JSON reads it back, so the
    digest written and the digest checked see the same values (tuples are lists, numpy
    scalars are numbers).
    """
    body = json.loads(json.dumps(card, default=_json_default))
    body.pop("model_sha256", None)
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def seal_card(card: dict[str, Any], tensors_sha256: str) -> dict[str, Any]:
    """The card with the format version and both digests of the weights it describes."""
    card = {k: v for k, v in card.items() if k != "model_sha256"}
    card.update(format_version=FORMAT_VERSION, tensors_sha256=tensors_sha256)
    card["model_sha256"] = card_digest(card)
    return card


def save_weights(path: str | os.PathLike, state_dict: dict, card: dict[str, Any]) -> dict:
    """Write weights with the card in the file's metadata; returns the card with its digests."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    card = seal_card(card, tensors_digest({k: _to_numpy(v) for k, v in tensors.items()}))
    metadata = {"digitrec_card": json.dumps(card, default=_json_default)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return card


def _to_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def save_run(run_dir: str | os.PathLike, state_dict: dict, card: dict[str, Any]) -> dict:
    """The run's model: weights (self-describing) first, then the readable card beside them."""
    run_dir = Path(run_dir)
    card = save_weights(run_dir / WEIGHTS_FILE, state_dict, card)
    write_json(run_dir / CARD_FILE, card)
    return card


def weights_path(path: str | os.PathLike) -> Path:
    """Accept a run directory or a .safetensors file."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"{path}: no model file here (train one with `digitrec train`)")
    return path


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors as numpy, card) from a weights file, with its digests and card checked.

    Torch-free. Any damage, to the tensors, the card or the file's header, is a ModelError.
    """
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = weights_path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        arrays = load_file(str(path))
    except _read_errors() as error:
        raise ModelError(
            f"{path}: not a readable safetensors file ({_first_line(error)})"
        ) from None
    if "digitrec_card" not in metadata:
        raise ModelError(f"{path}: safetensors file without a digitrec model card")
    try:
        card = json.loads(metadata["digitrec_card"])
    except json.JSONDecodeError:
        raise ModelError(f"{path}: its model card is not valid JSON") from None
    if not isinstance(card, dict):
        raise ModelError(f"{path}: its model card is not a JSON object")
    expected = card.get("tensors_sha256")
    if not expected:
        raise ModelError(f"{path}: its model card has no tensors_sha256 digest to check against")
    if tensors_digest(arrays) != expected:
        raise ModelError(f"{path}: weights do not match the digest in their card (corrupt file?)")
    if not card.get("model_sha256"):
        raise ModelError(
            f"{path}: its model card has no model_sha256 digest (written by an older "
            "digitrec, which did not protect the card; train it again)"
        )
    if card_digest(card) != card["model_sha256"]:
        raise ModelError(
            f"{path}: its model card does not match its model_sha256 digest "
            "(altered or corrupt card)"
        )
    for name, array in arrays.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise ModelError(f"{path}: tensor {name} holds NaN or infinite values")
    check_card(card, path)
    return arrays, _with_readable_card(path, card)


def _read_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # A damaged header can fail in the parser, in the UTF-8 decoding or in the tensor layout.
    return (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError, OverflowError)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_card(card: dict[str, Any], source: str | os.PathLike, outputs: int | None = None) -> None:
    """A ModelError unless the card's values are usable: every temperature finite and > 0,
    classes distinct strings or integers (as many as the model's `outputs`, when given), the
    standardisation mean finite and its std > 0."""
    members = card.get("members") or []
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise ModelError(f"{source}: its model card's members are not a list of models")
    temperatures = [card.get("temperature", 1.0)] + [m.get("temperature", 1.0) for m in members]
    for temperature in temperatures:
        if not _is_number(temperature) or temperature <= 0:
            raise ModelError(
                f"{source}: its model card has an unusable softmax temperature "
                f"{temperature!r} (needs a finite number above 0)"
            )
    classes = card.get("classes")
    if classes is not None:
        names = isinstance(classes, list) and all(
            isinstance(c, str | int) and not isinstance(c, bool) for c in classes
        )
        if not names or not classes or len(set(classes)) != len(classes):
            raise ModelError(
                f"{source}: its model card's classes are not a list of distinct names or numbers"
            )
        if outputs is not None and len(classes) != outputs:
            raise ModelError(
                f"{source}: its model card names {len(classes)} classes for a "
                f"model with {outputs} outputs"
            )
    section = card.get("input")
    standardise = section.get("standardise") if isinstance(section, dict) else None
    if standardise is not None:
        mean, std = (
            standardise.get(k) if isinstance(standardise, dict) else None for k in ("mean", "std")
        )
        if not _is_number(mean) or not _is_number(std) or std <= 0:
            raise ModelError(
                f"{source}: its model card's standardisation is unusable (mean "
                f"{mean!r}, std {std!r}; needs finite numbers, std above 0)"
            )


DIGITS = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself, read once (`ModelCard.from_dict`) after its digests
    and values were checked: typed fields for what the code reads, and the whole card as it was
    written in `data`, so that writing it back (`to_dict`) loses nothing the fields leave out
    (the real-world figures, the export record, a fine-tune's base)."""

    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = DIGITS
    temperature: float = 1.0
    parameters: int = 0
    dataset: str | None = None
    command: str | None = None
    created: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    members: tuple[dict[str, Any], ...] = ()
    tensors_sha256: str | None = None
    model_sha256: str | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, card: dict[str, Any]) -> ModelCard:
        dataset = card.get("dataset")
        return cls(
            model=str(card.get("model") or "model"),
            model_args=dict(card.get("model_args") or {}),
            classes=tuple(str(c) for c in card.get("classes") or DIGITS),
            temperature=float(card.get("temperature", 1.0)),
            parameters=int(card.get("parameters") or 0),
            dataset=dataset.get("name") if isinstance(dataset, dict) else None,
            command=card.get("command") or None,
            created=card.get("created"),
            metrics=dict(card.get("metrics") or {}),
            recipe=dict(card.get("recipe") or {}),
            members=tuple(card.get("members") or ()),
            tensors_sha256=card.get("tensors_sha256"),
            model_sha256=card.get("model_sha256"),
            data=copy.deepcopy(card),
        )

    def to_dict(self) -> dict[str, Any]:
        """The card as written, to save or to send (a copy: the card itself stays as read)."""
        return copy.deepcopy(self.data)

    @property
    def description(self) -> str:
        """How the model was made, for a report's header: its command, else its architecture."""
        return self.command or self.model

    @property
    def digest(self) -> str:
        """The digest that names this model: over weights and card, or the weights' alone."""
        return self.model_sha256 or self.tensors_sha256 or ""


def check_finite(probabilities: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """`probabilities` (N, C) if every value is finite, else a ModelError naming `source`.

    A model with damaged weights can turn out NaN; refusing here keeps NaN out of every answer
    (JSON has no NaN, and an argmax over NaN is a meaningless digit).
    """
    values = np.asarray(probabilities)
    if not np.isfinite(values).all():
        raise ModelError(
            f"{source}: the model gave NaN or infinite probabilities (damaged weights?)"
        )
    return probabilities


def _with_readable_card(path: Path, card: dict[str, Any]) -> dict[str, Any]:
    """The card, plus what the readable `model.json` beside `model.safetensors` adds to it.

    `model.json` may gain fields after training (the bundled model's real-world accuracy), but
    it must describe these very weights, and it never overrides the embedded card.
    """
    readable = path.parent / CARD_FILE
    if path.name != WEIGHTS_FILE or not readable.is_file():
        return card
    try:
        extra = json.loads(readable.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{readable}: not a readable JSON model card") from None
    if not isinstance(extra, dict) or extra.get("tensors_sha256") != card["tensors_sha256"]:
        raise ModelError(
            f"{readable} describes other weights than {path.name} (its tensors_sha256 differs)"
        )
    if extra.get("model_sha256", card["model_sha256"]) != card["model_sha256"]:
        raise ModelError(
            f"{readable} describes another model card than {path.name}'s (its model_sha256 differs)"
        )
    return {**extra, **card}


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    return read_weights(path)[1]


def state_digest(tensors_sha256: str, state_json: str) -> str:
    """SHA-256 over a training state: its tensors' digest and its bookkeeping JSON, as stored."""
    return hashlib.sha256(f"{tensors_sha256}\n{state_json}".encode()).hexdigest()


def save_state(path: str | os.PathLike, tensors: dict, state: dict[str, Any]) -> None:
    """The resumable training state: tensors plus JSON-able bookkeeping, sealed by a digest
    over both, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state_json = json.dumps(state, default=_json_default)
    digest = tensors_digest({k: _to_numpy(v) for k, v in tensors.items()})
    metadata = {
        "digitrec_state": state_json,
        "digitrec_state_sha256": state_digest(digest, state_json),
    }
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """(tensors, bookkeeping) of a training state, refused with a ModelError unless the file
    is whole: readable, and matching the digest it was sealed with."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"{path.parent}: no training state to resume from ({path.name} is "
            "missing; a run writes it after its first checkpoint interval)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except _read_errors() as error:
        raise ModelError(f"{path}: not a readable training state ({_first_line(error)})") from None
    if "digitrec_state" not in metadata:
        raise ModelError(f"{path}: not a digitrec training state")
    if "digitrec_state_sha256" not in metadata:
        raise ModelError(
            f"{path}: a training state without a digest (written by an older "
            "digitrec); start the run again"
        )
    digest = tensors_digest({k: _to_numpy(v) for k, v in tensors.items()})
    if state_digest(digest, metadata["digitrec_state"]) != metadata["digitrec_state_sha256"]:
        raise ModelError(f"{path}: the training state does not match its digest (corrupt file?)")
    try:
        state = json.loads(metadata["digitrec_state"])
    except json.JSONDecodeError:
        raise ModelError(f"{path}: its training state is not valid JSON") from None
    return tensors, state


def flatten_optimizer(state_dict: dict) -> tuple[dict, dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON-able rest (no pickle needed)."""
    import torch

    tensors, plain = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for index, values in state_dict["state"].items():
        plain["state"][str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
                plain["state"][str(index)][key] = "__tensor__"
            else:
                plain["state"][str(index)][key] = value
    return tensors, plain


def unflatten_optimizer(tensors: dict, plain: dict[str, Any]) -> dict:
    state = {}
    for index, values in plain["state"].items():
        state[int(index)] = {
            key: tensors[f"optim.{index}.{key}"] if value == "__tensor__" else value
            for key, value in values.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}
