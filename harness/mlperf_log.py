"""The one MLPerf logger of the project: every `mlperf_logging.mllog` call goes through `MLPerfLogger`.

It writes `:::MLLOG {...}` lines (the format `python -m mlperf_logging.compliance_checker --usage
training --ruleset 3.1.0 LOG` reads) to a file and optionally to stdout. Only the main rank logs: on
other ranks every method is a no-op, so the training loop calls it unconditionally.

Event order in a run (what the checker enforces): init_start → log_hyperparameters → init_stop →
run_start → per epoch block_start/epoch_start … epoch_stop/block_stop → eval_start → eval_accuracy →
eval_stop → … → run_stop.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlperf_logging.mllog import constants
from mlperf_logging.mllog.mllog import MLLogger

from harness.config import Config
from harness.data.sampler import images_per_rank

BENCHMARK = constants.MASKRCNN
RUN_STATUSES = ("success", "aborted")
DIVISIONS = ("closed", "open")
SUBMISSION_STATUSES = ("cloud", "onprem", "preview", "research")

# mllog records the file:line of the code that logged; public method → _emit → mllog.event →
# _log_helper puts the training loop's call site three frames above mllog's default.
_CALLER_DEPTH = 3
_logger_ids = itertools.count()


class MLPerfLogError(OSError):
    """A line of the MLPerf log could not be written (e.g. a full disk): the log is the run's
    result, so this stops the run instead of being dropped as logging's handlers drop errors."""


class _StrictFileHandler(logging.FileHandler):
    """A FileHandler that raises on a failed write; logging's default prints and goes on, which
    silently dropped 178 of 201 lines on a full disk."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        raise MLPerfLogError(f"could not write the MLPerf log {self.baseFilename}: {error}") from (
            error
        )


def continue_log(path: str | Path, restart: bool = False) -> bool:
    """Prepare a run's mlperf.log for the process that resumes it; True when that process
    continues the log, False when it starts a new one (restart, or the attempt never reached
    run_start: a run resumed before its first checkpoint starts over).

    A resumed run keeps ONE log that passes the checker: the interrupted attempt's log is kept
    aside unchanged (mlperf.attempt-<n>.log, for the record), and mlperf.log continues it without
    what the attempt did not finish: its run_stop (the resumed process logs the run's own) and an
    eval_start never scored (the resumed process evaluates that epoch again). The resumed process
    then logs no second submission, init or run_start block.
    """
    path = Path(path)
    if not path.is_file():
        return False
    n = 1
    while (kept := path.with_name(f"{path.stem}.attempt-{n}{path.suffix}")).exists():
        n += 1
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keys = []
    for line in lines:
        try:
            keys.append(json.loads(line.split(":::MLLOG ", 1)[1])["key"])
        except (IndexError, ValueError, KeyError):
            keys.append(None)  # a line cut short by the kill: dropped below
    if restart or constants.RUN_START not in keys:
        os.replace(path, kept)
        return False
    keep = [key is not None and key != constants.RUN_STOP for key in keys]
    scored = 0
    for i in reversed(range(len(lines))):
        if keys[i] in (constants.EVAL_STOP, constants.EVAL_ACCURACY):
            scored += 1
        elif keys[i] == constants.EVAL_START:
            if scored:
                scored = 0
            else:
                keep[i] = False
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line for line, k in zip(lines, keep, strict=True) if k), "utf-8")
    os.replace(path, kept)
    os.replace(tmp, path)
    return True


class MLPerfLogger:
    """`:::MLLOG` writer for one run.

    Args:
        path: log file (appended to; its folder must exist). None logs to stdout only.
        is_main: False on every rank but 0; such a logger writes nothing.
        stdout: also echo each line to stdout.
    """

    def __init__(self, path: str | Path | None, is_main: bool = True, stdout: bool = False) -> None:
        self.is_main = is_main
        self.failed = False  # a write failed: the error went to the caller, nothing more is written
        self._logger: logging.Logger | None = None
        self._mllog: MLLogger | None = None
        if not is_main:
            return
        if path is None and not stdout:
            raise ValueError("MLPerfLogger: give a log file `path` or stdout=True")
        logger = logging.getLogger(f"harness.mlperf_log.{next(_logger_ids)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handlers: list[logging.Handler] = []
        if path is not None:
            path = Path(path)
            if not path.parent.is_dir():
                raise FileNotFoundError(f"MLPerfLogger: folder of log file {path} does not exist")
            handlers.append(_StrictFileHandler(path, mode="a", encoding="utf-8"))
        if stdout:
            handlers.append(logging.StreamHandler(sys.stdout))
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        self._logger = logger
        self._mllog = MLLogger(logger=logger, default_stack_offset=_CALLER_DEPTH)

    def close(self) -> None:
        """Flush and close the log file; later calls are no-ops."""
        if self._logger is None:
            return
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)
        self._logger = None
        self._mllog = None

    def _emit(
        self, kind: str, key: str, value: Any = None, metadata: dict[str, Any] | None = None
    ) -> None:
        if self._mllog is None or self.failed:
            return
        try:
            getattr(self._mllog, kind)(key=key, value=value, metadata=metadata)
        except MLPerfLogError:
            self.failed = True
            raise

    def event(self, key: str, value: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """A point-in-time line for any other key (e.g. a rule-defined optional key)."""
        self._emit("event", key, value, metadata)

    def init_start(self) -> None:
        self._emit("start", constants.INIT_START)

    def init_stop(self) -> None:
        self._emit("end", constants.INIT_STOP)

    def run_start(self) -> None:
        """Starts the timed region: time to train is measured from here."""
        self._emit("start", constants.RUN_START)

    def run_stop(self, status: str) -> None:
        """Ends the timed region; `status` is "success" (target reached) or "aborted"."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run_stop: status must be one of {RUN_STATUSES}, got {status!r}")
        self._emit("end", constants.RUN_STOP, metadata={constants.STATUS: status})

    def block_start(self, first_epoch_num: int, epoch_count: int) -> None:
        """A block is the epochs between two evaluations; epochs are numbered from 1."""
        if epoch_count <= 0:
            raise ValueError(f"block_start: epoch_count must be > 0, got {epoch_count}")
        self._emit(
            "start",
            constants.BLOCK_START,
            metadata={
                constants.FIRST_EPOCH_NUM: first_epoch_num,
                constants.EPOCH_COUNT: epoch_count,
            },
        )

    def block_stop(self, first_epoch_num: int) -> None:
        self._emit(
            "end", constants.BLOCK_STOP, metadata={constants.FIRST_EPOCH_NUM: first_epoch_num}
        )

    def epoch_start(self, epoch_num: int) -> None:
        self._emit("start", constants.EPOCH_START, metadata={constants.EPOCH_NUM: epoch_num})

    def epoch_stop(self, epoch_num: int) -> None:
        self._emit("end", constants.EPOCH_STOP, metadata={constants.EPOCH_NUM: epoch_num})

    def eval_start(self, epoch_num: int) -> None:
        self._emit("start", constants.EVAL_START, metadata={constants.EPOCH_NUM: epoch_num})

    def eval_stop(self, epoch_num: int) -> None:
        self._emit("end", constants.EVAL_STOP, metadata={constants.EPOCH_NUM: epoch_num})

    def eval_accuracy(self, accuracy: Mapping[str, float], epoch_num: int) -> None:
        """Log COCO AP@[.5:.95] as {"BBOX": box AP, "SEGM": mask AP}, fractions in [0, 1]."""
        missing = {"BBOX", "SEGM"} - set(accuracy)
        if missing:
            raise KeyError(f"eval_accuracy: accuracy lacks {sorted(missing)}; got {dict(accuracy)}")
        value = {"BBOX": float(accuracy["BBOX"]), "SEGM": float(accuracy["SEGM"])}
        self._emit(
            "event", constants.EVAL_ACCURACY, value, metadata={constants.EPOCH_NUM: epoch_num}
        )

    def submission(self, cfg: Config, platform: str, cache_cleared: bool) -> None:
        """The submission keys and cache_clear, before init_start as in NVIDIA's accepted logs
        (mlcommons/training_results_v3.1 NVIDIA/results/*/maskrcnn/result_*.txt).

        cache_cleared: whether the page cache was really dropped before this run (harness.cache);
        the log states what happened, not what was meant.
        """
        if not platform:
            raise ValueError("submission: the platform name is empty")
        if cfg.run.division not in DIVISIONS:
            raise ValueError(f"run.division must be one of {DIVISIONS}, got {cfg.run.division!r}")
        if cfg.run.submission_status not in SUBMISSION_STATUSES:
            raise ValueError(
                f"run.submission_status must be one of {SUBMISSION_STATUSES}, "
                f"got {cfg.run.submission_status!r}"
            )
        values: dict[str, Any] = {
            constants.SUBMISSION_BENCHMARK: BENCHMARK,
            constants.SUBMISSION_ORG: cfg.run.submission_org,
            constants.SUBMISSION_DIVISION: cfg.run.division,
            constants.SUBMISSION_STATUS: cfg.run.submission_status,
            constants.SUBMISSION_PLATFORM: platform,
            constants.CACHE_CLEAR: bool(cache_cleared),
        }
        for key, value in values.items():
            self._emit("event", key, value)

    def log_hyperparameters(self, cfg: Config, world_size: int, seed: int) -> None:
        """Log, exactly once each, the hyperparameter keys closed Mask R-CNN requires, between
        init_start and init_stop (the order of NVIDIA's accepted logs).

        Args:
            cfg: the resolved run config; `solver.ims_per_batch` is the global batch.
            world_size: number of training processes; the global batch must split evenly over them
                (harness.data.sampler.images_per_rank raises ConfigError otherwise).
            seed: the seed actually used (after resolving cfg.run.seed = -1 and broadcasting).
        """
        solver = cfg.solver
        values: dict[str, Any] = {
            constants.SEED: int(seed),
            # images per device and step: NVIDIA's logs carry it as d_batch_size
            "d_batch_size": images_per_rank(solver.ims_per_batch, world_size),
            constants.GLOBAL_BATCH_SIZE: solver.ims_per_batch,
            constants.NUM_IMAGE_CANDIDATES: cfg.model.rpn.post_nms_top_n_train,
            constants.GRADIENT_ACCUMULATION_STEPS: solver.gradient_accumulation_steps,
            # the reference's optimizer (tools/train_mlperf.py logs this name)
            constants.OPT_NAME: "sgd_with_momentum",
            constants.OPT_BASE_LR: solver.base_lr,
            constants.OPT_LR_WARMUP_STEPS: solver.warmup_iters,
            constants.OPT_LR_WARMUP_FACTOR: solver.warmup_factor,
            constants.OPT_LR_DECAY_FACTOR: solver.gamma,
            constants.OPT_LR_DECAY_STEPS: list(solver.steps),
            constants.MIN_IMAGE_SIZE: cfg.data.min_size,
            constants.MAX_IMAGE_SIZE: cfg.data.max_size,
        }
        for key, value in values.items():
            self._emit("event", key, value)

    def weights_initialization(self, tensors: Iterable[str]) -> None:
        """One line per module whose weights this run initializes itself (not loaded from the
        pretrained backbone), as NVIDIA's logs name them (metadata `tensor`)."""
        for name in tensors:
            self._emit("event", constants.WEIGHTS_INITIALIZATION, metadata={"tensor": name})

    def dataset_sizes(self, train_samples: int, eval_samples: int) -> None:
        """train_samples and eval_samples, known only once the data is read, so after run_start
        (the reference's tools/train_mlperf.py logs train_samples after building its loader)."""
        self._emit("event", constants.TRAIN_SAMPLES, int(train_samples))
        self._emit("event", constants.EVAL_SAMPLES, int(eval_samples))

    def tracked_stats(self, step: int, stats: Mapping[str, float], throughput: float) -> None:
        """Losses and speed at a logging interval: `tracked_stats` (metadata step) and
        `throughput` (images/s), the pair NVIDIA's accepted logs write."""
        value = {k: float(v) for k, v in stats.items()}
        value["throughput"] = float(throughput)
        self._emit("event", "tracked_stats", value, metadata={"step": int(step)})
        self._emit("event", "throughput", float(throughput))
