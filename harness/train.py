"""Train Mask R-CNN to the MLPerf target: `python -m harness.train --config configs/NAME.yaml [k=v ...]`.

The loop reads top to bottom: set up, then per epoch train, checkpoint, evaluate, decide. Logging,
checkpoints, evaluation and metrics are small objects it calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

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

EXIT_TARGET_MISSED = 4  # distinct from 1, an uncaught exception
EXIT_NON_FINITE = 3
EXIT_CONFIG_ERROR = 2  # as argparse exits on a bad command line
EXIT_ABORTED = 130


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; the loop saves a checkpoint and logs run_stop aborted.

    Args: the signal's name, the epochs completed, the images of the next epoch already trained
    on, and the epoch whose evaluation the stop interrupted (0: none).
    """


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, hw = resolve_config(args)
    dist = distributed.init_distributed()
    platform.check_matches(cfg, hw, dist.world_size)
    check_runnable(cfg, dist.world_size)
    cache_cleared = clear_page_cache(cfg, dist)
    check_inputs(cfg)  # paths only, before the run directory: a mistake leaves nothing behind
    device = dist.device
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
    # A resumed run continues its one MLPerf log (see mlperf_log.continue_log); a run resumed
    # before its first checkpoint starts over, its attempt's log kept aside.
    continued = False
    if args.resume and dist.is_main:
        continued = continue_log(run_dir / "mlperf.log", restart=state is None)
    continued = distributed.broadcast_object(continued)
    mllog = MLPerfLogger(run_dir / "mlperf.log", is_main=dist.is_main)
    if not continued:
        mllog.submission(cfg, cfg.run.platform or hw.platform, cache_cleared)
        mllog.init_start()

    torch.manual_seed(seed + dist.rank)
    model = build_model(cfg.model)
    if cfg.model.backbone.weights:
        load_backbone_weights(
            model.backbone.body, cfg.model.backbone.weights, cfg.model.backbone.weights_format
        )
    normalization = normalization_for(cfg.model)
    model.to(device)
    if not continued:
        mllog.log_hyperparameters(cfg, dist.world_size, seed)
        mllog.weights_initialization(initialized_modules(model, bool(cfg.model.backbone.weights)))
    train_model = model
    if dist.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        # Frozen-BN buffers never change: broadcasting them every step would be wasted traffic.
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False
        )
    optimizer = build_optimizer(model, cfg.solver, device)
    schedule = LRSchedule(optimizer, cfg.solver)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(cfg, device) == torch.float16)

    iteration, epoch, position, eval_pending = 0, 0, 0, 0
    scored: dict[int, tuple[float, float]] = {}
    if state is not None:
        checkpoint.restore_training_state(state, model, optimizer, scaler)
        iteration, epoch, position = state["iteration"], state["epoch"], state["sampler_position"]
        # An evaluation the previous process began (or had due) but never scored is redone first.
        scored = evaluated(run_dir)
        eval_pending = state.get("eval_pending", 0)
        if eval_pending in scored:
            eval_pending = 0
        del state

    images_per_step = cfg.solver.ims_per_batch  # the global batch: a step's images, all ranks
    metrics = MetricsWriter(run_dir, cfg.solver.max_iter, iteration, is_main=dist.is_main)
    targets = {"BBOX": cfg.run.target_bbox_map, "SEGM": cfg.run.target_segm_map}
    eval_started: dict[int, float] = {}
    stop_signal: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop_signal.append(signum))

    def save(epoch_done: int, position_in_epoch: int, pending: int = 0) -> None:
        """Checkpoint on rank 0; `pending`: the epoch whose evaluation is due and not scored."""
        if dist.is_main:
            state = checkpoint.training_state(
                model, optimizer, scaler, iteration, epoch_done, position_in_epoch, cfg, pending
            )
            checkpoint.save_checkpoint(run_dir / "checkpoints", state)

    def reaches(bbox: float, segm: float) -> bool:
        return bbox >= cfg.run.target_bbox_map and segm >= cfg.run.target_segm_map

    def stop_name() -> str:
        return signal.Signals(stop_signal[0]).name if stop_signal else "a stop on another rank"

    def stoppable(loader):
        """The val batches until a stop signal: an evaluation stops between batches."""
        for batch in loader:
            if stop_signal:
                return
            yield batch

    def record_eval(eval_epoch: int, acc: dict[str, float], seconds: float) -> bool:
        mllog.eval_accuracy(acc, eval_epoch)
        mllog.eval_stop(eval_epoch)
        metrics.log_eval(eval_epoch, iteration, acc, seconds)
        return reaches(acc["BBOX"], acc["SEGM"])

    def evaluate_epoch(eval_epoch: int) -> bool:
        """Evaluate the model as it is after `eval_epoch`; True when the targets are reached (with
        async_eval: when an evaluation finished by now reached them)."""
        mllog.eval_start(eval_epoch)
        eval_start = time.perf_counter()
        # Evaluation leaves the random state as it found it (the val loader draws from it): the
        # training after it is then the same whether or not a resumed process evaluated.
        rng = checkpoint.rng_state()
        try:
            results = run_evaluation(model, stoppable(val_loader), device, cfg, label_to_category)
        finally:
            checkpoint.set_rng_state(rng)
        if distributed.any_rank(bool(stop_signal)):
            raise StopRequested(stop_name(), eval_epoch, 0, eval_epoch)
        results = evaluate.gather_results(results)
        if not dist.is_main:
            return False
        if evaluator is None:
            acc = evaluate.coco_map(ann_file, results, backend=cfg.run.eval_backend)
            return record_eval(eval_epoch, acc, time.perf_counter() - eval_start)
        evaluator.submit(eval_epoch, results)
        eval_started[eval_epoch] = eval_start
        return False

    if not continued:
        mllog.init_stop()
        # The clock starts before any part of the system touches the dataset (training_rules.adoc,
        # "Timing": "The clock must start before any part of the system touches the dataset"):
        # the loaders, annotation files and the evaluator are built after run_start, as the
        # reference's tools/train_mlperf.py builds its data loader after RUN_START.
        mllog.run_start()
    status, exit_code = "aborted", EXIT_TARGET_MISSED
    evaluator = None
    trained: tuple[int, int] | None = None  # (epochs done, images of the next): what to save
    try:
        train_loader = build_train_loader(cfg, normalization, dist.rank, dist.world_size, seed)
        val_loader = build_val_loader(cfg, normalization, dist.rank, dist.world_size)
        ann_file = val_annotation_file(cfg)
        label_to_category = category_ids(ann_file)
        if not continued:
            mllog.dataset_sizes(train_loader.num_samples, val_loader.num_samples)
        if cfg.run.async_eval:
            evaluator = evaluate.AsyncEvaluator(ann_file, cfg.run.eval_backend)
        every = cfg.run.eval_every_epochs
        last_epoch = last_epoch_of_run(iteration, epoch, position, cfg.solver, len(train_loader))
        block_first = block_last = 0  # the open block's first and last epochs; 0: none open
        # A previous process may have scored the target and been killed before run_stop.
        reached = any(reaches(*acc) for acc in scored.values())
        if eval_pending and not reached:
            reached = distributed.broadcast_flag(evaluate_epoch(eval_pending))
        while (
            not reached
            and iteration < cfg.solver.max_iter
            and (cfg.solver.max_epochs == 0 or epoch < cfg.solver.max_epochs)
        ):
            epoch += 1
            if not block_first:
                block_first, block_last = epoch, block_end(epoch, every, last_epoch)
                mllog.block_start(block_first, block_last - block_first + 1)
            mllog.epoch_start(epoch)
            train_loader.set_epoch(epoch, start=position)
            consumed, position = position, 0
            trained = (epoch - 1, consumed)  # where a resume would continue: epochs done, images
            data_start = time.perf_counter()
            for batch in train_loader:
                # Every rank stops at the same step, even when the signal reached some a step
                # later: one rank still inside a collective would fail instead of stopping.
                if distributed.any_rank(bool(stop_signal)):
                    raise StopRequested(stop_name(), epoch - 1, consumed, 0)
                batch = batch.to(device, non_blocking=True)
                step_start = time.perf_counter()
                lr = schedule.step(iteration)
                with autocast_context(cfg, device):
                    losses = train_model(batch.images, batch.targets)
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.solver.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    clip_grad_norm(optimizer, cfg.solver.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                iteration += 1
                consumed += images_per_step
                trained = (epoch - 1, consumed)
                log_now = iteration % cfg.run.log_every_iters == 0
                # .item() syncs with the GPU, so on CUDA losses are checked at the logging
                # interval only; on the CPU it costs nothing and every step is checked.
                if log_now or device.type == "cpu":
                    values = {k: v.item() for k, v in distributed.all_reduce_mean(losses).items()}
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        print(
                            f"non-finite loss at iteration {iteration}: "
                            f"{', '.join(f'{k}={values[k]}' for k in bad)}; the last good "
                            f"checkpoint in {run_dir / 'checkpoints'} is kept",
                            file=sys.stderr,
                        )
                        status, exit_code = "aborted", EXIT_NON_FINITE
                        return exit_code
                if log_now:
                    step_time = time.perf_counter() - data_start
                    throughput = images_per_step / step_time
                    data_time = step_start - data_start
                    metrics.log_iteration(
                        iteration, epoch, values, lr, step_time, data_time, throughput
                    )
                    stats = {"time": step_time, "data": data_time, "loss": sum(values.values())}
                    mllog.tracked_stats(iteration, {**stats, **values, "lr": lr}, throughput)
                data_start = time.perf_counter()
                if iteration >= cfg.solver.max_iter:
                    break
            # The epoch ran to its end, even when max_iter fell on its last batch.
            if consumed == len(train_loader) * images_per_step:
                consumed = 0
            trained = (epoch - 1, consumed) if consumed else (epoch, 0)
            mllog.epoch_stop(epoch)
            block_done = epoch >= block_last or iteration >= cfg.solver.max_iter
            if block_done:
                mllog.block_stop(block_first)
                block_first = 0
            evaluating = block_done and every > 0
            if consumed:
                # Stopped inside the epoch (max_iter): resuming must finish this epoch, not skip it.
                save(epoch - 1, consumed, epoch if evaluating else 0)
            elif epoch % cfg.run.checkpoint_every_epochs == 0 or evaluating:
                # Saved before the evaluation it is due: a kill during it loses no score.
                save(epoch, 0, epoch if evaluating else 0)

            if evaluating:
                reached = evaluate_epoch(epoch)
            if evaluator is not None and dist.is_main:
                for done_epoch, acc in evaluator.poll():
                    seconds = time.perf_counter() - eval_started.pop(done_epoch)
                    reached = record_eval(done_epoch, acc, seconds) or reached
            reached = distributed.broadcast_flag(reached)
            if dist.is_main:
                try:
                    write_plots(run_dir, targets)
                except Exception as error:  # a plot is a convenience, not the run's result
                    print(f"warning: could not write the plots: {error}", file=sys.stderr)

        if evaluator is not None and not reached and dist.is_main:
            for done_epoch, acc in evaluator.wait_all():
                seconds = time.perf_counter() - eval_started.pop(done_epoch)
                reached = record_eval(done_epoch, acc, seconds) or reached
        if not distributed.parameters_in_sync(model):
            raise RuntimeError("ranks ended the run with different parameters (DDP out of sync)")
        status = "success" if reached else "aborted"
        exit_code = 0 if reached else EXIT_TARGET_MISSED
    except CocoDataError as error:
        # A corrupt image or annotation met while training: the rules fix the training set, so
        # the run cannot skip it; what was trained is saved, and the error names the file.
        if trained is not None:
            save(*trained)
        print(f"python -m harness.train: data error: {error}", file=sys.stderr)
        exit_code = EXIT_CONFIG_ERROR
    except StopRequested as stop:
        signal_name, epoch_done, consumed_in_epoch, pending = stop.args
        save(epoch_done, consumed_in_epoch, pending)
        print(
            f"{signal_name} received: checkpoint saved in {run_dir / 'checkpoints'}; "
            f"resume with --resume {run_dir}",
            file=sys.stderr,
        )
        exit_code = EXIT_ABORTED
    except checkpoint.NonFiniteStateError as error:
        print(f"{error}; the last good checkpoint is kept", file=sys.stderr)
        exit_code = EXIT_NON_FINITE
    finally:
        if not mllog.failed:
            mllog.run_stop(status)
        mllog.close()
        metrics.close()
        if dist.is_main:
            try:
                write_plots(run_dir, targets)
            except Exception as error:  # the plots must not replace the run's outcome
                print(f"could not write the plots in {run_dir / 'plots'}: {error}", file=sys.stderr)
        if evaluator is not None:
            evaluator.close()
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
