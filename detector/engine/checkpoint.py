"""Atomic checkpoints, and reading them back without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``. It is written to a temporary file in the same folder,
fsynced, then moved over the old one with ``os.replace``: a crash at any moment leaves
either the old checkpoint or the new one, never a torn file (but maybe a temporary file,
which ``remove_stale_temporaries`` clears at the next start).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
BEST = "best.pt"
_TMP_SUFFIX = ".tmp"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of saves that were killed midway (a SIGKILL, a power cut)
    in ``folder``, and return them. Nothing else removes them; call it when no save into
    ``folder`` can be running, at the start of a run."""
    stale = sorted(folder.glob(f".*{_TMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; refuses pickled code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' entry)")
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG the training step may touch."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    state["python_version"] = random.getstate()[0]
    state["python_gauss"] = random.getstate()[2]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; sync it so it survives a power cut.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
