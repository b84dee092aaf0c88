"""Dropping the page cache before a run, and saying truthfully whether it happened.

training_rules.adoc (3.1), "Data State at Start of Run": "You must flush the cache or restart the
system prior to benchmarking." The log's `cache_clear` states whether this run's node(s) did.

Three ways, tried in order on each node (local rank 0; the others wait):
1. this process writes 3 to /proc/sys/vm/drop_caches after a sync (root with a writable /proc/sys:
   a bare-metal node, a privileged container);
2. HARNESS_DROP_CACHES_CMD: a command that drops the caches for this node from outside, e.g. a
   site's privileged helper (`sudo /usr/local/sbin/drop-caches`), as NVIDIA's run scripts drop them
   from the host; it counts when it exits 0;
3. HARNESS_CACHES_DROPPED=1: the host already dropped them before starting this container (the
   Backend.AI agent host or a pre-start hook); the run relies on that statement.

Closed-division runs require one of them (harness.train exits 2 otherwise). Open runs (the CPU demo,
tests) drop only when HARNESS_DROP_CACHES=1 and otherwise log cache_clear false.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True)
class CacheClear:
    done: bool
    how: str  # what happened, for the run's stderr


def drop_page_cache(
    env: Mapping[str, str] | None = None, drop_caches: Path | None = None
) -> CacheClear:
    """Drop this node's page cache by the first of the three ways above that works (env: the
    process environment by default; drop_caches: DROP_CACHES by default)."""
    env = os.environ if env is None else env
    drop_caches = DROP_CACHES if drop_caches is None else drop_caches
    os.sync()
    try:
        drop_caches.write_text("3\n")
        return CacheClear(True, f"3 written to {drop_caches}")
    except OSError as error:
        direct_failure = f"{drop_caches}: {error.strerror or error}"
    command = env.get("HARNESS_DROP_CACHES_CMD", "").strip()
    if command:
        proc = subprocess.run(command, shell=True, capture_output=True, text=True)
        if proc.returncode == 0:
            return CacheClear(True, f"HARNESS_DROP_CACHES_CMD ({command!r}) exited 0")
        return CacheClear(
            False,
            f"{direct_failure}; HARNESS_DROP_CACHES_CMD ({command!r}) exited {proc.returncode}: "
            f"{proc.stderr.strip()[-200:]}",
        )
    if env.get("HARNESS_CACHES_DROPPED") == "1":
        return CacheClear(True, "HARNESS_CACHES_DROPPED=1: dropped by the host before the run")
    return CacheClear(
        False,
        f"{direct_failure}; neither HARNESS_DROP_CACHES_CMD nor HARNESS_CACHES_DROPPED=1 is set",
    )


def wanted(division: str, env: Mapping[str, str] = os.environ) -> bool:
    """Whether this run drops the cache: always for closed runs, on request for open ones."""
    return division == "closed" or env.get("HARNESS_DROP_CACHES") == "1"
