"""Training metrics: metrics.jsonl and TensorBoard events in the run folder, a progress display,
and plots made from the file.

metrics.jsonl holds one JSON object per line:
    {"type": "iter", "time", "iteration", "epoch", "loss", "losses": {term: value}, "lr",
     "step_time", "data_time", "img_per_s"}                     (times in seconds, unix time)
    {"type": "eval", "time", "epoch", "iteration", "BBOX", "SEGM", "eval_time"}

The same values go to TensorBoard event files (events.out.tfevents.*) beside it, with the
iteration as the step: train/loss, train/<loss term>, train/lr, train/img_per_s,
train/step_time, train/data_time, eval/box_mAP, eval/mask_mAP, eval/time. `tensorboard --logdir
runs/` (the image's tensorboard service) shows every run in the folder.

Only the main rank writes and displays (`is_main=False` makes every method a no-op).
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

METRICS_FILE = "metrics.jsonl"
PLOTS = ("loss.png", "lr.png", "map.png")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=round(seconds)))


class MetricsWriter:
    """Appends iteration and evaluation records to run_dir/metrics.jsonl and shows progress.

    Progress goes to `stream` (default stderr): a tqdm bar when it is a terminal, otherwise one
    plain line per `log_iteration` call (the loop calls it every cfg.run.log_every_iters).

    Args:
        run_dir: the run folder (must exist).
        total_iters: planned iterations, for the bar and the ETA.
        start_iter: first iteration of this process (non-zero when resuming).
        is_main: False on every rank but 0.
        stream: where progress goes.
        tty: force the display mode; default: stream.isatty().
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_iters: int,
        start_iter: int = 0,
        is_main: bool = True,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.is_main = is_main
        self.total_iters = total_iters
        self._file: TextIO | None = None
        self._events: Any = None
        self._bar: Any = None
        if not is_main:
            return
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"MetricsWriter: run folder {run_dir} does not exist")
        self.path = run_dir / METRICS_FILE
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        # Imported here: only the main rank writes events. purge_step hides the points a resumed
        # run's previous process logged after the checkpoint it resumes from (steps > start_iter).
        from torch.utils.tensorboard import SummaryWriter

        self._events = SummaryWriter(
            log_dir=str(run_dir), purge_step=start_iter + 1 if start_iter else None, flush_secs=30
        )
        self._stream = stream if stream is not None else sys.stderr
        self._last_map: tuple[int, float, float] | None = None
        self._first: tuple[int, float] | None = None
        if tty if tty is not None else self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_iters, initial=start_iter, file=self._stream, unit="it", leave=True
            )

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        # Flushed per record: the file is read by plots and by people while the run goes on.
        self._file.flush()

    def log_iteration(
        self,
        iteration: int,
        epoch: int,
        losses: Mapping[str, float],
        lr: float,
        step_time: float,
        data_time: float,
        images_per_sec: float,
    ) -> None:
        """Record one training iteration (losses as python floats: averaged over ranks, already
        synced) and update the display.

        Args:
            iteration: iterations completed so far.
            step_time: seconds of the last step, data wait included.
            data_time: seconds of it spent waiting for the loader.
        """
        if self._file is None:
            return
        losses = {key: float(value) for key, value in losses.items()}
        total = sum(losses.values())
        now = time.time()
        self._write(
            {
                "type": "iter",
                "time": now,
                "iteration": iteration,
                "epoch": epoch,
                "loss": total,
                "losses": losses,
                "lr": float(lr),
                "step_time": float(step_time),
                "data_time": float(data_time),
                "img_per_s": float(images_per_sec),
            }
        )
        scalars = {"loss": total, **losses, "lr": float(lr), "img_per_s": float(images_per_sec)}
        scalars |= {"step_time": float(step_time), "data_time": float(data_time)}
        for key, value in scalars.items():
            self._events.add_scalar(f"train/{key}", value, iteration, walltime=now)
        if self._first is None:
            self._first = (iteration, now)
        done, started = self._first
        rate = (iteration - done) / (now - started) if iteration > done and now > started else 0.0
        eta = (self.total_iters - iteration) / rate if rate > 0 else math.inf
        terms = " ".join(
            f"{key.removeprefix('loss_')} {value:.3f}" for key, value in losses.items()
        )
        status = (
            f"loss {total:.3f} ({terms}) | lr {lr:.5f} | {images_per_sec:.1f} img/s | "
            f"data {data_time * 1000:.0f} ms | eta {_duration(eta)}"
        )
        if self._last_map is not None:
            status += (
                f" | mAP {self._last_map[1]:.3f}/{self._last_map[2]:.3f} (ep {self._last_map[0]})"
            )
        if self._bar is not None:
            self._bar.update(iteration - self._bar.n)
            self._bar.set_postfix_str(status, refresh=True)
        else:
            print(f"it {iteration}/{self.total_iters} ep {epoch} | {status}", file=self._stream)

    def log_eval(
        self, epoch: int, iteration: int, scores: Mapping[str, float], eval_time: float
    ) -> None:
        """Record an evaluation: scores {"BBOX": box AP, "SEGM": mask AP}; eval_time in seconds
        (inference + scoring)."""
        if self._file is None:
            return
        missing = {"BBOX", "SEGM"} - set(scores)
        if missing:
            raise KeyError(f"log_eval: scores lack {sorted(missing)}; got {dict(scores)}")
        bbox, segm = float(scores["BBOX"]), float(scores["SEGM"])
        now = time.time()
        self._write(
            {
                "type": "eval",
                "time": now,
                "epoch": epoch,
                "iteration": iteration,
                "BBOX": bbox,
                "SEGM": segm,
                "eval_time": float(eval_time),
            }
        )
        for key, value in (("box_mAP", bbox), ("mask_mAP", segm), ("time", float(eval_time))):
            self._events.add_scalar(f"eval/{key}", value, iteration, walltime=now)
        # Evaluations are rare and the ones people wait for: shown without the 30 s delay.
        self._events.flush()
        self._last_map = (epoch, bbox, segm)
        message = f"eval epoch {epoch}: box mAP {bbox:.4f}, mask mAP {segm:.4f} ({eval_time:.1f} s)"
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of run_dir/metrics.jsonl; a line cut short by a crash is skipped with a warning."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(
                f"{path}:{lineno}: not a JSON record, skipped", RuntimeWarning, stacklevel=2
            )
    return records


def write_plots(run_dir: str | Path, targets: Mapping[str, float] | None = None) -> list[Path]:
    """Draw plots/loss.png, plots/lr.png and plots/map.png from run_dir/metrics.jsonl.

    Args:
        targets: optional {"BBOX": t, "SEGM": t} drawn as dashed lines on the mAP plot.

    Returns:
        The three PNG paths.
    """
    # matplotlib costs about a second to import; only plotting needs it. The object API with the
    # Agg canvas draws without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = read_metrics(run_dir)
    iters = [r for r in records if r.get("type") == "iter"]
    evals = [r for r in records if r.get("type") == "eval"]
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(exist_ok=True)

    def new_axes(title: str, xlabel: str, ylabel: str):
        fig = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    def finish(fig, ax, name: str, has_data: bool) -> Path:
        if has_data:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes)
        path = out_dir / name
        fig.savefig(path)
        return path

    steps = [r["iteration"] for r in iters]
    fig, ax = new_axes("Training loss", "iteration", "loss")
    series = {"total": [r["loss"] for r in iters]}
    for term in dict.fromkeys(key for r in iters for key in r["losses"]):
        series[term] = [r["losses"].get(term, math.nan) for r in iters]
    for label, values in series.items():
        ax.plot(steps, values, label=label, linewidth=2 if label == "total" else 1)
    if iters and all(v > 0 for v in series["total"]):
        ax.set_yscale("log")
    paths = [finish(fig, ax, "loss.png", bool(iters))]

    fig, ax = new_axes("Learning rate", "iteration", "lr")
    ax.plot(steps, [r["lr"] for r in iters], label="lr")
    paths.append(finish(fig, ax, "lr.png", bool(iters)))

    fig, ax = new_axes("COCO AP@[.5:.95]", "epoch", "mAP")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = [r["epoch"] for r in evals]
    for key, label in (("BBOX", "box"), ("SEGM", "mask")):
        line = ax.plot(epochs, [r[key] for r in evals], marker="o", label=label)[0]
        if targets and key in targets:
            ax.axhline(
                targets[key], linestyle="--", color=line.get_color(), label=f"{label} target"
            )
    paths.append(finish(fig, ax, "map.png", bool(evals)))
    return paths
