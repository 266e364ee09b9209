"""Run directories and self-describing checkpoints (safetensors + a JSON model card).

A run directory holds:
- `model.safetensors`: the best-on-validation weights; its metadata carries the model card, so
  the file alone rebuilds the model;
- `model.json`: the same card, readable (model name and settings, normalisation, dataset and its
  digests, recipe, metrics, date);
- `history.json`: per-epoch metrics;
- `last.safetensors`: the last complete training state (weights, optimizer, scheduler, RNG,
  epoch) for `digitrec train --resume`.
Every file is written to a temporary name and renamed, so a kill at any moment leaves the previous
complete file in place. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
HISTORY_FILE = "history.json"
STATE_FILE = "last.safetensors"
FORMAT_VERSION = 1


class ModelError(ValueError):
    """A model file that cannot be used: missing, corrupt, or failing its shape/digest checks."""


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then rename tmp_path over `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide models from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def save_weights(path: str | os.PathLike, state_dict: dict, card: dict[str, Any]) -> dict:
    """Write weights with the card in the file's metadata; returns the card with its digest."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    card = dict(card, format_version=FORMAT_VERSION)
    card["tensors_sha256"] = tensors_digest({k: _to_numpy(v) for k, v in tensors.items()})
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
    """(tensors as numpy, card) from a weights file, with its digest checked. Torch-free."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = weights_path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"{path}: not a readable safetensors file ({error})") from None
    if "digitrec_card" not in metadata:
        raise ModelError(f"{path}: safetensors file without a digitrec model card")
    try:
        card = json.loads(metadata["digitrec_card"])
    except json.JSONDecodeError:
        raise ModelError(f"{path}: its model card is not valid JSON") from None
    expected = card.get("tensors_sha256")
    if not expected:
        raise ModelError(f"{path}: its model card has no tensors_sha256 digest to check against")
    if tensors_digest(arrays) != expected:
        raise ModelError(f"{path}: weights do not match the digest in their card (corrupt file?)")
    return arrays, _with_readable_card(path, card)


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
    return {**extra, **card}


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    return read_weights(path)[1]


def save_state(path: str | os.PathLike, tensors: dict, state: dict[str, Any]) -> None:
    """The resumable training state: tensors plus JSON-able bookkeeping, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"digitrec_state": json.dumps(state, default=_json_default)}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no training state to resume from")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "digitrec_state" not in metadata:
        raise ModelError(f"{path}: not a digitrec training state")
    return load_file(str(path)), json.loads(metadata["digitrec_state"])


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
