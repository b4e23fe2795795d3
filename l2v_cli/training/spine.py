"""The trainer spine shared by MNTP, SimCSE and supervised training: the HF Trainer, plus what it lacks.

Why the HF Trainer: DeepSpeed ZeRO 0–3 (incl. gathered 16-bit saves), DDP, gradient accumulation,
schedulers and exact resume (optimizer, scheduler, RNG, data position) come tested. We add:
  - checkpoints named `step-000200/` that appear only once complete (HF writes `checkpoint-N` in
    place; we rename after the save, so a kill mid-save never leaves a checkpoint that looks whole),
  - a refusal to resume from a checkpoint of a different recipe,
  - a stop on NaN/inf loss that names the step and keeps the last good checkpoint,
  - tokens/s, a JSONL metrics log, a PNG loss curve and a rich progress bar,
  - a shuffled order in constant memory (`training.shuffle`), not a list of every row per rank.
Stages subclass `L2VTrainer` and implement `compute_loss`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import IterableDataset
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from l2v_cli.errors import L2VError
from l2v_cli.training import checkpoints as ck
from l2v_cli.training.shuffle import ShuffleSampler

# transformers 5.2x renames gradient_checkpointing -> activation_checkpointing; the old names work
# across all of 5.x (our supported range), so keep them and drop the rename notices.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)


def build_training_args(train, out_dir: Path, *, bf16: bool, deepspeed: str | None = None,
                        seed: int = 42, group_by_length: bool = False) -> TrainingArguments:
    """TrainingArguments from a recipe `TrainConfig` (one place for the mapping).

    `group_by_length`: HF's length-grouped sampler over the dataset's "length" column."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_steps,
        lr_scheduler_type=train.lr_scheduler,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        gradient_checkpointing=train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        logging_steps=train.logging_steps,
        seed=train.seed if train.seed is not None else seed,
        data_seed=train.seed if train.seed is not None else seed,
        dataloader_num_workers=train.dataloader_num_workers,
        dataloader_drop_last=True,
        remove_unused_columns=False,  # our collators build the model inputs themselves
        report_to=[],
        disable_tqdm=True,  # the rich progress bar replaces it
        bf16=bf16,
        use_cpu=not cuda,  # DeepSpeed on CPU miscounts the batch size without it (FINDINGS)
        # gloo for CPU process groups; in a single process, no backend (accelerate would expect a group).
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        deepspeed=deepspeed,
        logging_nan_inf_filter=False,  # a NaN must be seen, not filtered
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        length_column_name="length",
    )


class L2VTrainer(Trainer):
    """HF Trainer with atomic step-NNNNNN checkpoints, a NaN guard and token accounting."""

    def __init__(self, *args, stage_config: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # it prints raw dicts; RichProgress + metrics.jsonl replace it
        self.stage_config = stage_config
        self.tokens_seen = 0  # real (non-pad) tokens this process has trained on since the last log
        self._last_log_time = time.time()
        self.shuffle: ShuffleSampler | None = None  # the "random" order, once the data loader is built
        self.add_callback(ShuffleEpoch(self))

    # -- data order ---------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        """The "random" order from `ShuffleSampler` (constant memory) instead of HF's RandomSampler,
        whose `randperm(n).tolist()` holds every row index on every rank; other strategies
        (group_by_length) as HF builds them. transformers 5.x has no public way to choose the
        sampler short of re-building the whole data loader (`get_train_dataloader`); this
        underscore hook is the narrow one (in 5.x it takes the dataset, defaulting to ours)."""
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "random" or ds is None or isinstance(ds, IterableDataset):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self.shuffle = ShuffleSampler(len(ds), seed)
        return self.shuffle

    # -- loss helpers -------------------------------------------------------------------
    def count_tokens(self, attention_mask: torch.Tensor) -> None:
        self.tokens_seen += int(attention_mask.sum())

    def step_impl(self, model, inputs, num_items_in_batch=None):
        """One forward/backward; subclasses may replace it (GradCache)."""
        return super().training_step(model, inputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = self.step_impl(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = ck.last_checkpoint(Path(self.args.output_dir))
            raise L2VError(
                f"loss became {loss.item()} at step {self.state.global_step + 1}",
                where=self.args.output_dir,
                fix=f"lower the learning rate or check the data; the last good checkpoint is "
                f"{last.name if last else 'none (no checkpoint saved yet)'} and --resume restarts from it")
        return loss

    # -- logging ------------------------------------------------------------------------
    def log(self, logs, start_time=None):
        now = time.time()
        world = max(1, self.args.world_size)
        if "loss" in logs:
            logs["tokens_per_s"] = round(self.tokens_seen * world / max(now - self._last_log_time, 1e-9), 1)
            self.tokens_seen, self._last_log_time = 0, now
        super().log(logs, start_time)

    # -- checkpoints --------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        out = Path(self.args.output_dir)
        keep, self.args.save_total_limit = self.args.save_total_limit, None  # we rotate ourselves
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = keep
        self.accelerator.wait_for_everyone()
        if self.is_world_process_zero():
            src = out / f"checkpoint-{self.state.global_step}"
            dst = out / ck.step_dir_name(self.state.global_step)
            ck.stamp(src, self.stage_config)  # the stamp makes it count as complete
            if dst.exists():
                import shutil

                shutil.rmtree(dst)
            os.replace(src, dst)
            ck.rotate(out, keep)
        self.accelerator.wait_for_everyone()


class ShuffleEpoch(TrainerCallback):
    """Give the shuffle sampler the epoch that begins. accelerate's `set_epoch` reaches it in a
    fresh run, but not through the wrappers of a resumed multi-process one (SkipBatchSampler >
    BatchSamplerShard > BatchSampler), which would then replay epoch 0's order."""

    def __init__(self, trainer: L2VTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kw):
        if self.trainer.shuffle is not None:
            # state.epoch is epochs done + the fraction of this one (restored on resume)
            self.trainer.shuffle.set_epoch(int(state.epoch or 0))


class JsonlMetrics(TrainerCallback):
    """Append every log record to metrics.jsonl and redraw loss.png (main process only)."""

    def __init__(self, stage_dir: Path):
        self.path = Path(stage_dir) / "metrics.jsonl"
        self.png = Path(stage_dir) / "loss.png"

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step, "time": round(time.time(), 3), **logs}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            plot_loss(self.path, self.png)
            for step, loss, median in loss_spikes(self.path):
                print(f"l2v: warning: loss {loss:.4g} at step {step} is above {SPIKE_FACTOR:g}x the running median "
                      f"({median:.4g}) of the steps before it", file=sys.stderr, flush=True)


SPIKE_FACTOR = 2.0


def loss_spikes(metrics: Path, factor: float = SPIKE_FACTOR, min_history: int = 3) -> list[tuple[int, float, float]]:
    """(step, loss, running median) of every logged training loss above `factor` x the median of the
    losses logged before it (once `min_history` are there): the log check of a stage's stability."""
    import statistics

    rows = [json.loads(line) for line in open(metrics)] if Path(metrics).exists() else []
    losses = [(r["step"], float(r["loss"])) for r in rows if "loss" in r]
    out = []
    for i, (step, loss) in enumerate(losses):
        if i >= min_history:
            median = statistics.median(x for _, x in losses[:i])
            if loss > factor * median:
                out.append((step, loss, median))
    return out


def plot_loss(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics)] if metrics.exists() else []
    pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*pts), marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(png.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)


class RichProgress(TrainerCallback):
    """A progress bar with loss, lr and tokens/s on stderr (main process only)."""

    def __init__(self, description: str):
        self.description = description
        self.progress = None

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=Console(stderr=True))
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps,
                                           completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kw):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress and logs and "loss" in logs:
            info = f"loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}  {logs.get('tokens_per_s', 0):,.0f} tok/s"
            self.progress.update(self.task, info=info)

    def on_train_end(self, args, state, control, **kw):
        if self.progress:
            self.progress.stop()
            self.progress = None
