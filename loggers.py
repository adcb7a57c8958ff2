"""Live dashboards for a run, each optional: Weights & Biases (--wandb PROJECT) and TensorBoard
(--tensorboard).

metrics.jsonl stays the record of a run; a dashboard only mirrors its numbers while the run
goes. Each package is imported only when its flag asks for it (the trainer's run-time
dependencies stay torch, tokenizers, safetensors and numpy); a missing one is a UserError, one line
saying what to install. Only the process that writes the run's files opens the dashboards.

What is logged: every int / float / bool of a metrics.jsonl record, at x = the record's step,
as train/<key> or eval/<benchmark>/<key> (benchmark "held-out" when the record names none).
Lists (per_epoch) and text are left out, and so are NaN and inf: metrics.jsonl writes them as
null, and one inf would squash a chart's y-axis.
"""
import importlib
import math
import os
import secrets

from cli import UserError


class Loggers:
    """What open_loggers returns. log(record) sends one metrics.jsonl record to every dashboard
    that was asked for; close() ends them. With none asked for, both do nothing."""

    def __init__(self, wandb_run=None, tensorboard_writer=None):
        self.wandb_run = wandb_run
        self.tensorboard_writer = tensorboard_writer

    def log(self, record: dict):
        if self.wandb_run is None and self.tensorboard_writer is None:
            return
        scalars = dashboard_scalars(record)
        if self.wandb_run is not None:
            # The x-axis is this "step" value (see start_wandb), not W&B's own counter: one call per
            # record, committed at once, whatever the order of train and eval records.
            self.wandb_run.log({"step": record["step"], **scalars})
        if self.tensorboard_writer is not None:
            for name, value in scalars.items():
                self.tensorboard_writer.add_scalar(name, value, global_step=record["step"])
            self.tensorboard_writer.flush()  # one small write per record: the dashboard is live, a crash loses nothing

    def close(self):
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
        if self.tensorboard_writer is not None:
            self.tensorboard_writer.close()
            self.tensorboard_writer = None


def open_loggers(run_dir: str, config: dict, wandb_project: str | None, tensorboard: bool,
                 resume_step: int = 0) -> Loggers:
    """The dashboards the flags ask for, on a run folder that exists. resume_step: 0 for a new run;
    on --resume, the checkpoint's step (the trainer replays the steps after it). W&B then
    continues the same W&B run (its id is kept in run_dir/wandb_id); TensorBoard hides what an
    earlier process logged after the checkpoint, as metrics.jsonl drops those lines."""
    # Both imports before anything is written: a missing package stops the run at once.
    wandb = need_package("wandb", "--wandb") if wandb_project else None
    if tensorboard:
        need_package("tensorboard", "--tensorboard")
    wandb_run = start_wandb(wandb, run_dir, config, wandb_project, resume_step) if wandb_project else None
    tensorboard_writer = start_tensorboard(run_dir, resume_step) if tensorboard else None
    return Loggers(wandb_run, tensorboard_writer)


def dashboard_scalars(record: dict) -> dict:
    """{dashboard name: number} for one metrics.jsonl record."""
    if record["split"] == "eval":
        prefix = f"eval/{record.get('benchmark', 'held-out')}/"  # runs older than named benchmarks
    else:
        prefix = f"{record['split']}/"
    scalars = {}
    for key, value in record.items():
        if key in ("step", "split", "benchmark") or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        scalars[prefix + key] = int(value) if isinstance(value, bool) else value  # 0 / 1: both dashboards chart numbers
    return scalars


def need_package(name: str, flag: str):
    """import `name`, or a one-line UserError saying how to install it. A package that is there but
    fails to import (one of its own dependencies missing) keeps its own error: installing it
    again would not help."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise UserError(f"{flag} needs the {name} package: pip install {name}") from None


def start_wandb(wandb, run_dir: str, config: dict, project: str, resume_step: int):
    """A W&B run named after the run folder, writing under run_dir/wandb/. WANDB_MODE and the
    other WANDB_* variables apply as usual (WANDB_MODE=offline: nothing leaves the machine; `wandb
    sync` uploads later)."""
    id_path = os.path.join(run_dir, "wandb_id")
    if resume_step and os.path.exists(id_path):
        with open(id_path, encoding="utf-8") as f:
            run_id = f.read().strip()
    else:  # a new run (or --wandb first given on a --resume): a new W&B run
        run_id = secrets.token_hex(8)
        with open(id_path + ".tmp", "w", encoding="utf-8") as f:  # (atomic: a crash leaves no half id)
            f.write(run_id)
        os.replace(id_path + ".tmp", id_path)
    try:
        run = wandb.init(project=project, dir=run_dir, config=config, id=run_id, resume="allow",
                         name=os.path.basename(os.path.normpath(run_dir)))
    except wandb.errors.Error as e:  # not logged in, no network, ...: W&B's own words, on one line
        raise UserError(f"--wandb {project}: {' '.join(str(e).split())}") from None
    # W&B's own step must only grow, but an evaluation shares its step with a training step and
    # comes after it. So the charts' x-axis is the trainer's "step" value and W&B's counter just
    # counts log calls. After --resume the steps between the checkpoint and the crash are logged
    # again, at the same x (with the same values, resume being exact).
    run.define_metric("step")
    run.define_metric("train/*", step_metric="step")
    run.define_metric("eval/*", step_metric="step")
    return run


def start_tensorboard(run_dir: str, resume_step: int):
    """An event-file writer in run_dir/tensorboard/ (`tensorboard --logdir <run_dir>` shows it)."""
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    # purge_step: TensorBoard discards the earlier processes' events at this step and after, which
    # the resumed run logs again (metrics.jsonl keeps the lines up to the checkpoint's step).
    return SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
