"""Train Mask R-CNN to the MLPerf target: `python -m harness.train --config configs/NAME.yaml [k=v ...]`.

main() reads top to bottom: set up (set_up: everything before the clock), then per epoch train,
checkpoint, evaluate, decide, and the exit code. Run holds the state those steps share; logging,
checkpoints, evaluation and metrics are small objects it calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness import (
    cache,
    checkpoint,
    closed_division,
    config,
    distributed,
    evaluate,
    platform,
    resume,
)
from harness.data import (
    build_train_loader,
    build_val_loader,
    category_ids,
    check_inputs,
    val_annotation_file,
)
from harness.data.coco import CocoDataError
from harness.data.sampler import images_per_rank
from harness.metrics import MetricsWriter, evaluated, write_plots
from harness.mlperf_log import MLPerfLogError, MLPerfLogger, continue_log
from harness.model import build_model
from harness.model.weights import load_backbone_weights, normalization_for
from harness.postprocess import ResultEncoder, default_workers
from harness.run_dir import make_run_dir
from harness.solver import LRSchedule, build_optimizer, clip_grad_norm

if TYPE_CHECKING:
    from harness.data.batch import Batch

EXIT_TARGET_MISSED = 4  # distinct from 1, an uncaught exception
EXIT_NON_FINITE = 3
EXIT_CONFIG_ERROR = 2  # as argparse exits on a bad command line
EXIT_ABORTED = 130


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; the loop saves a checkpoint and logs run_stop aborted.

    Args: the signal's name, the epochs completed, the images of the next epoch already trained
    on, and the epoch whose evaluation the stop interrupted (0: none).
    """


class NonFiniteLoss(Exception):
    """A loss of the last step is NaN or Inf: the run ends (exit 3) keeping its last checkpoint."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.train", description=__doc__)
    p.add_argument(
        "--config",
        default=None,
        help="configs/NAME.yaml, or 'auto' to detect; with --resume, the run's own by default",
    )
    p.add_argument(
        "--resume",
        default=None,
        help="run directory to continue from its checkpoints, with its seed and config",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = p.parse_intermixed_args(argv)
    if args.config is None and args.resume is None:
        p.error("--config is required (or --resume RUN_DIR)")
    return args


def resolve_config(args: argparse.Namespace) -> tuple[config.Config, platform.Hardware]:
    """The run's config: the file (or the detected platform's) with the overrides, or, resuming,
    the run's own config.yaml, which the file and overrides may change only where
    resume.RESUMABLE allows."""
    hw = platform.detect()
    name = args.config
    path = platform.auto_config_path(hw) if name == "auto" else name
    if args.resume:
        return resume.run_config(Path(args.resume), path, args.overrides), hw
    return config.load(path, args.overrides), hw


def check_runnable(cfg: config.Config, world_size: int) -> None:
    """Refuse, before anything is created or logged, a run this harness cannot honestly make.

    - gradient accumulation: the loop takes one optimizer step per batch, so a log stating
      gradient_accumulation_steps > 1 would not be what ran;
    - a run logging `submission_division: closed` must be a closed run (harness.closed_division);
    - the global batch must split evenly over the ranks (harness.data.sampler.images_per_rank).
    """
    steps = cfg.solver.gradient_accumulation_steps
    if steps != 1:
        raise config.ConfigError(
            f"solver.gradient_accumulation_steps={steps}: the training loop does not accumulate "
            "gradients (one optimizer step per batch); only 1 is supported"
        )
    if cfg.run.division == "closed":
        problems = closed_division.problems(cfg, world_size)
        if problems:
            raise config.ConfigError(
                "config breaks the MLPerf closed-division rules (fix it, or set run.division=open):"
                " " + "; ".join(problems)
            )
    images_per_rank(cfg.solver.ims_per_batch, world_size)


def clear_page_cache(cfg: config.Config, dist: distributed.DistInfo) -> bool:
    """Drop every node's page cache when the run wants it (harness.cache.wanted); True when all
    nodes did. A closed run that could not is refused (training_rules.adoc: "You must flush the
    cache or restart the system prior to benchmarking")."""
    if not cache.wanted(cfg.run.division):
        return False
    # One process per node drops its node's cache; the collective below makes the others wait.
    result = cache.drop_page_cache() if dist.local_rank == 0 else cache.CacheClear(True, "")
    if dist.local_rank == 0:
        print(f"page cache: {result.how}", file=sys.stderr)
    flag = torch.tensor(float(result.done), device=dist.device)
    done = distributed.all_reduce_mean({"cache_clear": flag})["cache_clear"].item() == 1.0
    if cfg.run.division == "closed" and not done:
        raise config.ConfigError(
            "closed-division runs must start from a dropped page cache and this node could not "
            f"drop it ({result.how}); see harness/cache.py for HARNESS_DROP_CACHES_CMD and "
            "HARNESS_CACHES_DROPPED"
        )
    return done


def initialized_modules(model: torch.nn.Module, pretrained_backbone: bool) -> list[str]:
    """Names of the modules whose weights this run initializes: every module owning parameters,
    except the backbone body when its weights come from the pretrained file (NVIDIA's logs name
    these 21 tensors of the R-50 model in `weights_initialization` lines)."""
    names = []
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if pretrained_backbone and name.startswith("backbone.body."):
            continue
        names.append(name)
    return names


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16), read from cpuinfo's flags
    (False where there is no such file). Elsewhere oneDNN emulates bf16, ~30x slower than fp32 on
    an AVX2 CPU (benchmarks/RESULTS.md, "Precision on the CPU")."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(cfg: config.Config, device: torch.device) -> torch.dtype | None:
    """run.precision on `device`: None for fp32; amp is fp16 on CUDA (with a GradScaler) and bf16
    on the CPU; auto is fp16 on CUDA, bf16 on a CPU with native bf16 and fp32 on other CPUs."""
    precision = cfg.run.precision  # one of them: config.load validates the choice
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    if precision == "auto" and not native_bf16():
        return None
    return torch.bfloat16


def autocast_context(cfg: config.Config, device: torch.device):
    """Autocast to autocast_dtype(cfg, device), or nothing for fp32."""
    dtype = autocast_dtype(cfg, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def run_evaluation(model, loader, device, cfg, label_to_category: list[int]) -> list[dict]:
    """Detections of this rank's share of the val set as COCO result dicts (original pixels)."""
    model.eval()
    # On a GPU, worker processes paste and encode while the model evaluates the next batch; on the
    # CPU the model already uses every core.
    workers = default_workers() if device.type == "cuda" else 0
    encoder = ResultEncoder(label_to_category, cfg.model.roi_heads.mask_threshold, workers=workers)
    for batch in loader:
        batch = batch.to(device)
        with autocast_context(cfg, device):
            detections = model(batch.images, batch.targets)
        encoder.submit(detections, batch.targets)
    results = encoder.results()
    model.train()
    return results


def train_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: LRSchedule,
    iteration: int,
    grad_clip: float,
    autocast: AbstractContextManager,
) -> tuple[dict[str, torch.Tensor], float]:
    """One optimizer step as a run takes it (benchmarks/sync_count.py counts the syncs of this
    same function): the learning rate of update `iteration + 1`, the forward under `autocast`, the
    backward through the GradScaler, clipping when grad_clip > 0, the update. Returns the losses
    and the learning rate used; images and targets (a batch's) are on the model's device."""
    lr = schedule.step(iteration)
    with autocast:
        losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        clip_grad_norm(optimizer, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return losses, lr


def last_epoch_of_run(
    iteration: int,
    epoch: int,
    position: int,
    solver: config.SolverConfig,
    batches_per_epoch: int,
) -> int:
    """The epoch in which a run that reaches no target ends: the one holding iteration max_iter,
    or max_epochs. `iteration`, `epoch` (completed) and `position` (images of the next epoch already
    trained on, over all ranks) describe where the run starts."""
    left_in_next = batches_per_epoch - position // solver.ims_per_batch  # a step's images
    beyond_next = max(0, solver.max_iter - iteration - left_in_next)
    last = epoch + 1 + math.ceil(beyond_next / batches_per_epoch)
    return min(last, solver.max_epochs) if solver.max_epochs else last


def block_end(epoch: int, every: int, last_epoch: int) -> int:
    """The last epoch of the MLPerf block (the epochs between two evaluations) that starts at
    `epoch`: the next multiple of `every`, or the run's last epoch, which is always evaluated.
    every = 0 (no evaluation): one block to the end."""
    if every == 0:
        return last_epoch
    return min(math.ceil(epoch / every) * every, last_epoch)


class Run:
    """What the steps of one run share: the model, its optimizer and schedule; where training stands
    (`iteration`, `epoch` completed, `position`: images of the next epoch already trained on, over
    all ranks); the MLPerf log and the metrics; and, once the clock runs, the data and the
    evaluator. main() calls its steps in order: open_data, evaluate_unscored, then per epoch
    train_epoch, evaluate, decide; then finish and close."""

    def __init__(
        self,
        cfg: config.Config,
        dist: distributed.DistInfo,
        run_dir: Path,
        mllog: MLPerfLogger,
        state: dict | None,
        continued: bool,
    ) -> None:
        """Build the model and its optimizer (logging their hyperparameters and initialization
        unless the log `continued` a previous attempt's), then restore a resumed run's `state`."""
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.run_dir, self.mllog, self.continued = run_dir, mllog, continued
        torch.manual_seed(cfg.run.seed + dist.rank)
        self.model = model = build_model(cfg.model)
        backbone = cfg.model.backbone
        if backbone.weights:
            load_backbone_weights(model.backbone.body, backbone.weights, backbone.weights_format)
        self.normalization = normalization_for(cfg.model)
        model.to(self.device)
        if not continued:
            mllog.log_hyperparameters(cfg, dist.world_size, cfg.run.seed)
            mllog.weights_initialization(initialized_modules(model, bool(backbone.weights)))
        self.train_model = model
        if dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Frozen-BN buffers never change: broadcasting them every step would be wasted traffic.
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, broadcast_buffers=False
            )
        self.optimizer = build_optimizer(model, cfg.solver, self.device)
        self.schedule = LRSchedule(self.optimizer, cfg.solver)
        fp16 = autocast_dtype(cfg, self.device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

        self.iteration, self.epoch, self.position, self.eval_pending = 0, 0, 0, 0
        self.scored: dict[int, tuple[float, float]] = {}
        if state is not None:
            checkpoint.restore_training_state(state, model, self.optimizer, self.scaler)
            self.iteration, self.epoch = state["iteration"], state["epoch"]
            self.position = state["sampler_position"]
            # An evaluation the previous process began (or had due) but never scored is redone.
            self.scored = evaluated(run_dir)
            self.eval_pending = state.get("eval_pending", 0)
            if self.eval_pending in self.scored:
                self.eval_pending = 0

        self.metrics = MetricsWriter(run_dir, cfg.solver.max_iter, self.iteration, dist.is_main)
        self.evaluator: evaluate.AsyncEvaluator | None = None
        self.eval_started: dict[int, float] = {}  # async evaluations: epoch -> start time
        self.trained: tuple[int, int] | None = None  # (epochs done, images of the next): to save
        self.stop_signal: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.stop_signal.append(signum))

    def open_data(self) -> None:
        """The loaders, the val annotations and the evaluator: built after run_start, since the
        clock starts before any part of the system touches the dataset."""
        cfg, dist = self.cfg, self.dist
        self.train_loader = build_train_loader(
            cfg, self.normalization, dist.rank, dist.world_size, cfg.run.seed
        )
        self.val_loader = build_val_loader(cfg, self.normalization, dist.rank, dist.world_size)
        self.ann_file = val_annotation_file(cfg)
        self.label_to_category = category_ids(self.ann_file)
        if not self.continued:
            self.mllog.dataset_sizes(self.train_loader.num_samples, self.val_loader.num_samples)
        if cfg.run.async_eval:
            self.evaluator = evaluate.AsyncEvaluator(self.ann_file, cfg.run.eval_backend)
        self.last_epoch = last_epoch_of_run(
            self.iteration, self.epoch, self.position, cfg.solver, len(self.train_loader)
        )
        self.block_first = self.block_last = 0  # the open block's first and last epochs; 0: none

    def reaches(self, bbox: float, segm: float) -> bool:
        return bbox >= self.cfg.run.target_bbox_map and segm >= self.cfg.run.target_segm_map

    def evaluate_unscored(self) -> bool:
        """True when the targets are reached already: a previous process may have scored them and
        been killed before run_stop, or left an evaluation unscored, which is redone now."""
        reached = any(self.reaches(*acc) for acc in self.scored.values())
        if self.eval_pending and not reached:
            reached = distributed.broadcast_flag(self.evaluate(self.eval_pending))
        return reached

    def epochs_left(self) -> bool:
        solver = self.cfg.solver
        return self.iteration < solver.max_iter and (
            solver.max_epochs == 0 or self.epoch < solver.max_epochs
        )

    def stop_name(self) -> str:
        if self.stop_signal:
            return signal.Signals(self.stop_signal[0]).name
        return "a stop on another rank"

    def save(self, epoch_done: int, position_in_epoch: int, pending: int = 0) -> None:
        """Checkpoint on rank 0; `pending`: the epoch whose evaluation is due and not scored."""
        if self.dist.is_main:
            state = checkpoint.training_state(
                self.model,
                self.optimizer,
                self.scaler,
                self.iteration,
                epoch_done,
                position_in_epoch,
                self.cfg,
                pending,
            )
            checkpoint.save_checkpoint(self.run_dir / "checkpoints", state)

    def step(self, batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
        """One optimizer step on `batch` (on the device); returns its losses and learning rate."""
        losses, lr = train_step(
            self.train_model,
            batch.images,
            batch.targets,
            self.optimizer,
            self.scaler,
            self.schedule,
            self.iteration,
            self.cfg.solver.grad_clip,
            autocast_context(self.cfg, self.device),
        )
        self.iteration += 1
        return losses, lr

    def check_and_log(
        self, losses: dict[str, torch.Tensor], lr: float, data_start: float, step_start: float
    ) -> None:
        """Raise NonFiniteLoss on a NaN or Inf loss; log the step at the logging interval."""
        log_now = self.iteration % self.cfg.run.log_every_iters == 0
        # .item() syncs with the GPU, so on CUDA losses are checked at the logging interval only;
        # on the CPU it costs nothing and every step is checked.
        if not (log_now or self.device.type == "cpu"):
            return
        values = {k: v.item() for k, v in distributed.all_reduce_mean(losses).items()}
        bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(f"non-finite loss at iteration {self.iteration}: {', '.join(bad)}")
        if log_now:
            step_time = time.perf_counter() - data_start
            throughput = self.cfg.solver.ims_per_batch / step_time  # images/s over all ranks
            data_time = step_start - data_start
            self.metrics.log_iteration(
                self.iteration, self.epoch, values, lr, step_time, data_time, throughput
            )
            stats = {"time": step_time, "data": data_time, "loss": sum(values.values())}
            self.mllog.tracked_stats(self.iteration, {**stats, **values, "lr": lr}, throughput)

    def train_epoch(self) -> bool:
        """Train the next epoch (a resumed run: from where it stopped inside it), close it and, at
        its end, its MLPerf block, and checkpoint it. True when the block's evaluation is due: the
        checkpoint comes first, so a kill during the evaluation loses no score."""
        cfg, mllog = self.cfg, self.mllog
        self.epoch += 1
        epoch, every = self.epoch, cfg.run.eval_every_epochs
        images_per_step = cfg.solver.ims_per_batch  # the global batch: a step's images, all ranks
        if not self.block_first:
            self.block_first, self.block_last = epoch, block_end(epoch, every, self.last_epoch)
            mllog.block_start(self.block_first, self.block_last - self.block_first + 1)
        mllog.epoch_start(epoch)
        self.train_loader.set_epoch(epoch, start=self.position)
        consumed, self.position = self.position, 0
        self.trained = (epoch - 1, consumed)  # where a resume would continue: epochs done, images
        data_start = time.perf_counter()
        for batch in self.train_loader:
            # Every rank stops at the same step, even when the signal reached some a step later:
            # one rank still inside a collective would fail instead of stopping.
            if distributed.any_rank(bool(self.stop_signal)):
                raise StopRequested(self.stop_name(), epoch - 1, consumed, 0)
            batch = batch.to(self.device, non_blocking=True)
            step_start = time.perf_counter()
            losses, lr = self.step(batch)
            consumed += images_per_step
            self.trained = (epoch - 1, consumed)
            self.check_and_log(losses, lr, data_start, step_start)
            data_start = time.perf_counter()
            if self.iteration >= cfg.solver.max_iter:
                break
        # The epoch ran to its end, even when max_iter fell on its last batch.
        if consumed == len(self.train_loader) * images_per_step:
            consumed = 0
        self.trained = (epoch - 1, consumed) if consumed else (epoch, 0)
        mllog.epoch_stop(epoch)
        block_done = epoch >= self.block_last or self.iteration >= cfg.solver.max_iter
        if block_done:
            mllog.block_stop(self.block_first)
            self.block_first = 0
        evaluating = block_done and every > 0
        if consumed:
            # Stopped inside the epoch (max_iter): resuming must finish this epoch, not skip it.
            self.save(epoch - 1, consumed, epoch if evaluating else 0)
        elif epoch % cfg.run.checkpoint_every_epochs == 0 or evaluating:
            self.save(epoch, 0, epoch if evaluating else 0)
        return evaluating

    def stoppable(self, loader: Iterable[Batch]) -> Iterator[Batch]:
        """The val batches until a stop signal: an evaluation stops between batches."""
        for batch in loader:
            if self.stop_signal:
                return
            yield batch

    def record_eval(self, epoch: int, acc: dict[str, float], seconds: float) -> bool:
        self.mllog.eval_accuracy(acc, epoch)
        self.mllog.eval_stop(epoch)
        self.metrics.log_eval(epoch, self.iteration, acc, seconds)
        return self.reaches(acc["BBOX"], acc["SEGM"])

    def evaluate(self, epoch: int) -> bool:
        """Evaluate the model as it is after `epoch`; True when the targets are reached (with
        async_eval: False, the score arrives in decide or finish)."""
        self.mllog.eval_start(epoch)
        eval_start = time.perf_counter()
        # Evaluation leaves the random state as it found it (the val loader draws from it): the
        # training after it is then the same whether or not a resumed process evaluated.
        rng = checkpoint.rng_state()
        try:
            results = run_evaluation(
                self.model,
                self.stoppable(self.val_loader),
                self.device,
                self.cfg,
                self.label_to_category,
            )
        finally:
            checkpoint.set_rng_state(rng)
        if distributed.any_rank(bool(self.stop_signal)):
            raise StopRequested(self.stop_name(), epoch, 0, epoch)
        results = evaluate.gather_results(results)
        if not self.dist.is_main:
            return False
        if self.evaluator is None:
            acc = evaluate.coco_map(self.ann_file, results, backend=self.cfg.run.eval_backend)
            return self.record_eval(epoch, acc, time.perf_counter() - eval_start)
        self.evaluator.submit(epoch, results)
        self.eval_started[epoch] = eval_start
        return False

    def record_async(self, scores: Iterable[tuple[int, dict[str, float]]]) -> bool:
        """Log the asynchronous evaluations' `scores`; True when one reached the targets."""
        reached = False
        for epoch, acc in scores:
            seconds = time.perf_counter() - self.eval_started.pop(epoch)
            reached = self.record_eval(epoch, acc, seconds) or reached
        return reached

    def decide(self, reached: bool) -> bool:
        """After an epoch: whether the targets are reached on any evaluation so far (`reached`, or
        an asynchronous one finished by now), the same on every rank; the plots are redrawn."""
        if self.evaluator is not None and self.dist.is_main:
            reached = self.record_async(self.evaluator.poll()) or reached
        reached = distributed.broadcast_flag(reached)
        self.write_plots()
        return reached

    def finish(self, reached: bool) -> bool:
        """After the last epoch: the outcome once the asynchronous evaluations still running are
        scored; raises when the ranks ended with different parameters."""
        if self.evaluator is not None and not reached and self.dist.is_main:
            reached = self.record_async(self.evaluator.wait_all())
        if not distributed.parameters_in_sync(self.model):
            raise RuntimeError("ranks ended the run with different parameters (DDP out of sync)")
        return reached

    def write_plots(self) -> None:
        if self.dist.is_main:
            targets = {"BBOX": self.cfg.run.target_bbox_map, "SEGM": self.cfg.run.target_segm_map}
            try:
                write_plots(self.run_dir, targets)
            except Exception as error:  # a plot is a convenience, not the run's result
                print(
                    f"warning: could not write the plots in {self.run_dir / 'plots'}: {error}",
                    file=sys.stderr,
                )

    def close(self, status: str) -> None:
        """End the MLPerf log with run_stop `status` (unless writing it failed) and the metrics,
        draw the plots, stop the evaluator."""
        if not self.mllog.failed:
            self.mllog.run_stop(status)
        self.mllog.close()
        self.metrics.close()
        self.write_plots()
        if self.evaluator is not None:
            self.evaluator.close()


def set_up(args: argparse.Namespace) -> tuple[Run, resume.RunLock | None]:
    """Everything before the clock, checked before anything is created: the config, the ranks, the
    run directory (made, or the resumed one locked and its checkpoint checked), the MLPerf log
    (started, or continued: see mlperf_log.continue_log), the model and the optimizer."""
    cfg, hw = resolve_config(args)
    dist = distributed.init_distributed()
    platform.check_matches(cfg, hw, dist.world_size)
    check_runnable(cfg, dist.world_size)
    cache_cleared = clear_page_cache(cfg, dist)
    check_inputs(cfg)  # paths only, before the run directory: a mistake leaves nothing behind
    # The run's config.yaml records the seed actually used: a resumed run takes it from there.
    seed = distributed.broadcast_seed(cfg.run.seed)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))

    run_dir = Path(args.resume) if args.resume else None
    if run_dir is None and dist.is_main:
        run_dir = make_run_dir(cfg.run.output_dir, cfg.run.name, cfg)
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    lock = resume.RunLock(run_dir) if dist.is_main else None
    state = checkpoint.load_latest(run_dir / "checkpoints") if args.resume else None
    if state is not None:
        resume.check_checkpoint(run_dir, cfg, state)
    # A resumed run continues its one MLPerf log; a run resumed before its first checkpoint starts
    # over, its attempt's log kept aside.
    continued = False
    if args.resume and dist.is_main:
        continued = continue_log(run_dir / "mlperf.log", restart=state is None)
    continued = distributed.broadcast_object(continued)
    mllog = MLPerfLogger(run_dir / "mlperf.log", is_main=dist.is_main)
    if not continued:
        mllog.submission(cfg, cfg.run.platform or hw.platform, cache_cleared)
        mllog.init_start()
    return Run(cfg, dist, run_dir, mllog, state, continued), lock


def main(argv: list[str] | None = None) -> int:
    run, lock = set_up(parse_args(argv))
    if not run.continued:
        run.mllog.init_stop()
        # The clock starts before any part of the system touches the dataset (training_rules.adoc,
        # "Timing"): the loaders, annotation files and the evaluator are built after run_start
        # (Run.open_data), as the reference's tools/train_mlperf.py builds its loader after RUN_START.
        run.mllog.run_start()
    status, exit_code = "aborted", EXIT_TARGET_MISSED
    try:
        run.open_data()
        reached = run.evaluate_unscored()
        while not reached and run.epochs_left():
            if run.train_epoch():
                reached = run.evaluate(run.epoch)
            reached = run.decide(reached)
        if run.finish(reached):
            status, exit_code = "success", 0
    except CocoDataError as error:
        # A corrupt image or annotation met while training: the rules fix the training set, so the
        # run cannot skip it; what was trained is saved, and the error names the file.
        if run.trained is not None:
            run.save(*run.trained)
        print(f"python -m harness.train: data error: {error}", file=sys.stderr)
        exit_code = EXIT_CONFIG_ERROR
    except StopRequested as stop:
        signal_name, epoch_done, consumed_in_epoch, pending = stop.args
        run.save(epoch_done, consumed_in_epoch, pending)
        print(
            f"{signal_name} received: checkpoint saved in {run.run_dir / 'checkpoints'}; "
            f"resume with --resume {run.run_dir}",
            file=sys.stderr,
        )
        exit_code = EXIT_ABORTED
    except (NonFiniteLoss, checkpoint.NonFiniteStateError) as error:
        print(
            f"{error}; the last good checkpoint in {run.run_dir / 'checkpoints'} is kept",
            file=sys.stderr,
        )
        exit_code = EXIT_NON_FINITE
    finally:
        run.close(status)
        if lock is not None:
            lock.release()
        distributed.cleanup()
    return exit_code


def cli(argv: list[str] | None = None) -> int:
    """main() with a configuration mistake (exit 2, as argparse does) or a failed MLPerf log write
    (exit 1) reported as one line."""
    try:
        return main(argv)
    except config.ConfigError as error:
        print(f"python -m harness.train: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except MLPerfLogError as error:
        # The log is the run's result: a run whose log cannot be written has failed.
        print(f"python -m harness.train: {error}; the run stopped", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
