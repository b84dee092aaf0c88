"""What `--resume RUN_DIR` checks before it continues a run, and the lock that keeps one process
per run directory.

A resumed run is the same run: its seed and every setting that decides what is computed come from
the run's own config.yaml (written with the resolved seed when the run started). Only the keys in
RESUMABLE may differ on the command line: where the data and weights are read from, how they are
read, how often the run logs and checkpoints, and how long it may go on. Anything else is a mistake (exit 2), as is a
folder that is not a run, a checkpoint written by another config, or a run directory another live
process is training in.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path
from typing import Any, TextIO

from harness import config

RESUMABLE = frozenset(
    {
        "data.root",
        "data.loader",
        "data.decode_device",
        "data.num_workers",
        "model.backbone.weights",  # the weights are in the checkpoint; the path may move
        "run.output_dir",
        "run.log_every_iters",
        "run.checkpoint_every_epochs",
        "run.async_eval",
        "run.eval_backend",
        # how long the run may go on: a run may be extended (the schedule's steps may not change)
        "solver.max_iter",
        "solver.max_epochs",
    }
)
LOCK_FILE = ".lock"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(saved: dict[str, Any], wanted: config.Config) -> list[str]:
    """'key: saved -> wanted' for every key outside RESUMABLE in which `wanted` differs from the
    `saved` config (as config.to_dict writes it into config.yaml and checkpoints)."""
    before, after = _flat(saved), _flat(config.to_dict(wanted))
    return [
        f"{key}: {before.get(key)!r} -> {after[key]!r}"
        for key in after
        if key not in RESUMABLE and before.get(key) != after[key]
    ]


def run_config(run_dir: Path, config_arg: str | None, overrides: list[str]) -> config.Config:
    """The config to resume `run_dir` with: its config.yaml with `overrides` applied, or the file
    `config_arg` with them, which must then agree with the run's (see RESUMABLE). Raises
    ConfigError naming the folder, or every key that may not change."""
    saved_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise config.ConfigError(f"--resume {run_dir}: no such directory")
    if not saved_path.is_file() or not (run_dir / "checkpoints").is_dir():
        runs = sorted(p.name for p in run_dir.iterdir() if (p / "config.yaml").is_file())
        hint = f" (runs in it: {', '.join(runs[:5])})" if runs else ""
        raise config.ConfigError(
            f"--resume {run_dir}: not a run directory (no config.yaml and checkpoints/){hint}"
        )
    saved = config.load(saved_path, warn=False)  # its warnings came with the run itself
    wanted = config.load(config_arg if config_arg else saved_path, overrides)
    if wanted.run.seed == -1:
        # -1 asks for a random seed: for a resumed run that is the seed the run drew
        wanted = dataclasses.replace(
            wanted, run=dataclasses.replace(wanted.run, seed=saved.run.seed)
        )
    changed = differences(config.to_dict(saved), wanted)
    if changed:
        raise config.ConfigError(
            f"--resume {run_dir}: the run was made with another config; only "
            f"{', '.join(sorted(RESUMABLE))} may change on resume, not: {'; '.join(changed)}"
        )
    return wanted


def check_checkpoint(run_dir: Path, cfg: config.Config, state: dict[str, Any]) -> None:
    """The checkpoint must come from this run's config (a copied-in file from another run would
    silently train on with the other run's schedule)."""
    if "config" not in state:
        raise config.ConfigError(
            f"--resume {run_dir}: its checkpoint at iteration {state.get('iteration')} holds no "
            "config"
        )
    changed = differences(state["config"], cfg)
    if changed:
        raise config.ConfigError(
            f"--resume {run_dir}: its checkpoint at iteration {state.get('iteration')} was written "
            f"by another config: {'; '.join(changed)}"
        )


class RunLock:
    """An exclusive lock on a run directory, held while a process trains in it (rank 0)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._file: TextIO | None = open(self.path, "a+")  # noqa: SIM115 (closed in release())
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise config.ConfigError(
                f"run directory {run_dir} is in use by {holder}; two processes must not train "
                "in one run directory"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
