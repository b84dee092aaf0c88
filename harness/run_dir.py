"""A run's output folder: runs/<name>-<UTC timestamp>/ with config.yaml, checkpoints/ and plots/.

The training loop writes mlperf.log and metrics.jsonl into it; only rank 0 creates it.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from harness.config import Config, save

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def make_run_dir(
    output_dir: str | Path, name: str, cfg: Config, now: datetime.datetime | None = None
) -> Path:
    """Create `output_dir/<name>-<YYYYmmdd-HHMMSS>` (UTC) and save the resolved config in it.

    Args:
        output_dir: parent folder (cfg.run.output_dir), created if missing.
        name: run name (cfg.run.name): letters, digits, '.', '_', '-'.
        cfg: the resolved config, written as config.yaml.
        now: the timestamp to use (default: the current UTC time).

    Returns:
        The new folder; a suffix -2, -3, ... is added when two runs start in the same second.
    """
    if not _NAME.match(name):
        raise ValueError(f"run name {name!r} must be letters, digits, '.', '_' or '-'")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    base = Path(output_dir) / f"{name}-{now.astimezone(datetime.timezone.utc):%Y%m%d-%H%M%S}"
    base.parent.mkdir(parents=True, exist_ok=True)
    run_dir, suffix = base, 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            suffix += 1
            run_dir = base.with_name(f"{base.name}-{suffix}")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "plots").mkdir()
    save(cfg, run_dir / "config.yaml")
    return run_dir
