"""Crash-safe checkpoints: atomic writes, a SHA-256 digest per file, newest-valid-first resume.

Layout in the checkpoint folder (runs/<run-id>/checkpoints/):
    ckpt_00001234.pt          torch.save of the state dict, named by iteration (zero-padded)
    ckpt_00001234.pt.sha256   hex digest of that file, written before the file gets its name

A checkpoint file only ever appears under its final name complete (written to a hidden temp file in
the same folder, fsynced, then renamed), and `load_latest` trusts it only when its digest matches: a
file damaged later (bad disk, a copy cut short) is skipped with a warning and the previous one used.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from harness.config import Config, to_dict

_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")
# save_checkpoint's temp files: .ckpt_<iteration>.pt[.sha256].tmp-<pid>
_TEMP = re.compile(r"^\.ckpt_\d{8,}\.pt(?:\.sha256)?\.tmp-(\d+)$")
_DIGEST_SUFFIX = ".sha256"
_CHUNK = 1 << 20


class NonFiniteStateError(ValueError):
    """The model holds NaN or Inf: such a state is never saved as a checkpoint."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temp_files(path_dir: str | Path) -> list[Path]:
    """Delete the temp files of writes killed mid-way (their process is gone); returns them.

    A SIGKILL during save_checkpoint leaves `.ckpt_*.tmp-PID` behind, possibly hundreds of MB each;
    save_checkpoint and load_latest call this, so the next save or resume cleans up.
    """
    path_dir = Path(path_dir)
    if not path_dir.is_dir():
        return []
    removed = []
    for path in path_dir.iterdir():
        m = _TEMP.match(path.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def checkpoint_name(iteration: int) -> str:
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    return f"ckpt_{iteration:08d}.pt"


def list_checkpoints(path_dir: str | Path) -> list[Path]:
    """Checkpoint files in `path_dir`, oldest iteration first (digests and temp files excluded)."""
    path_dir = Path(path_dir)
    if not path_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in path_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


class _HashingWriter:
    """File wrapper that hashes what torch.save writes, so the digest costs no second read."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _fsync_dir(path_dir: Path) -> None:
    fd = os.open(path_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path_dir: str | Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` atomically as ckpt_<iteration>.pt and keep only the newest `keep` checkpoints.

    Args:
        path_dir: checkpoint folder (created if missing).
        state: must hold "iteration" (int); everything else must be loadable with
            torch.load(weights_only=True): tensors, numbers, strings, lists, tuples, dicts
            (`training_state` builds such a dict).
        keep: number of newest checkpoints to keep, >= 1.

    Returns:
        The path of the written checkpoint.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if not isinstance(state.get("iteration"), int):
        raise KeyError("state must hold an int 'iteration' (the checkpoint is named by it)")
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path_dir)
    final = path_dir / checkpoint_name(state["iteration"])
    digest_path = final.with_name(final.name + _DIGEST_SUFFIX)
    # Hidden temp names never match the checkpoint pattern, so a crash leaves nothing that looks
    # like a checkpoint; same folder so that os.replace is an atomic rename.
    tmp = path_dir / f".{final.name}.tmp-{os.getpid()}"
    tmp_digest = path_dir / f".{digest_path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp_digest, "w") as f:
            f.write(writer.digest.hexdigest())
            f.flush()
            os.fsync(f.fileno())
        # The digest gets its name first: a checkpoint name never exists without its digest.
        os.replace(tmp_digest, digest_path)
        os.replace(tmp, final)
        _fsync_dir(path_dir)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_digest.unlink(missing_ok=True)
    _prune(path_dir, keep)
    return final


def _prune(path_dir: Path, keep: int) -> None:
    kept = list_checkpoints(path_dir)[-keep:]
    wanted = {p.name for p in kept} | {p.name + _DIGEST_SUFFIX for p in kept}
    for path in path_dir.iterdir():
        stem = path.name.removesuffix(_DIGEST_SUFFIX)
        if _NAME.match(stem) and path.name not in wanted:
            path.unlink(missing_ok=True)


def _verify(path: Path) -> str | None:
    """Why `path` cannot be trusted, or None when its digest matches."""
    digest_path = path.with_name(path.name + _DIGEST_SUFFIX)
    if not digest_path.is_file():
        return f"its digest file {digest_path.name} is missing"
    if _file_digest(path) != digest_path.read_text().strip():
        return "its SHA-256 does not match (the file is truncated or corrupt)"
    return None


def load_latest(path_dir: str | Path, map_location: str | torch.device = "cpu") -> dict | None:
    """The newest checkpoint in `path_dir` whose digest verifies, or None when there is none.

    Each damaged newer file is skipped with a warning naming it; temp files of killed writes are
    removed.
    """
    remove_stale_temp_files(path_dir)
    for path in reversed(list_checkpoints(path_dir)):
        problem = _verify(path)
        if problem is not None:
            warnings.warn(f"skipping checkpoint {path}: {problem}", RuntimeWarning, stacklevel=2)
            continue
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            # The bytes are exactly what was saved, so this is a state that cannot be loaded
            # safely (e.g. a non-tensor object), not damage: falling back would hide it.
            raise RuntimeError(f"checkpoint {path} verified but could not be loaded") from err
    return None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when present) CUDA generator states, as checkpointable data."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "pos": int(numpy_state["state"]["pos"]),
            },
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states from `rng_state()`; CUDA only when saved and a GPU is present."""
    for key in ("python", "numpy", "torch"):
        if key not in state:
            raise KeyError(f"rng state lacks '{key}'")
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            **numpy_state,
            "state": {
                "key": numpy_state["state"]["key"].numpy().astype(np.uint32),
                "pos": numpy_state["state"]["pos"],
            },
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    iteration: int,
    epoch: int,
    sampler_position: int,
    cfg: Config,
    eval_pending: int = 0,
) -> dict[str, Any]:
    """Everything needed to resume: weights, optimizer and scaler state, position, RNG, config.

    Args:
        model: the bare model (unwrap DistributedDataParallel's `.module` first).
        sampler_position: samples of the current epoch already consumed (global count).
        eval_pending: the epoch whose evaluation is due but not scored yet (0: none): a resumed
            run evaluates it first, so a kill during an evaluation does not lose it.

    Raises NonFiniteStateError naming the tensors when the model holds NaN or Inf: a diverged
    model must never become "the last good checkpoint".
    """
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NonFiniteStateError(
            f"not saving a checkpoint at iteration {iteration}: non-finite values in "
            f"{', '.join(bad[:5])}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        )
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "epoch": int(epoch),
        "sampler_position": int(sampler_position),
        "eval_pending": int(eval_pending),
        "rng": rng_state(),
        "config": to_dict(cfg),
    }


def restore_training_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load a `training_state` dict into the objects and restore the RNG; the caller reads
    state["iteration"], ["epoch"] and ["sampler_position"] to resume the loop."""
    for key in ("model", "optimizer", "rng"):
        if key not in state:
            raise KeyError(f"checkpoint state lacks '{key}'")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
