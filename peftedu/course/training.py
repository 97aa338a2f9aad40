"""The training loop shared by every notebook: short, plain, readable (scoring: :mod:`peftedu.course.evaluation`).

``train`` is the loop the course writes by hand instead of ``transformers.Trainer``::

    for step in range(max_steps):
        for micro_batch in step_batches:                   # gradient accumulation (梯度累积)
            loss = model(**micro_batch).loss * n_micro / n_step
            loss.backward()
        clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step(); scheduler.step(); optimizer.zero_grad()

Accumulation weights each micro-batch by its share of the step's label tokens (``n_micro / n_step``),
so ``grad_accum=2, batch_size=b`` gives the same gradient as ``batch_size=2b`` -- the mean over all
label tokens of the step -- even when micro-batches hold different numbers of answer tokens.

Learning rate at optimizer step ``s`` (0-based) of ``T`` steps with ``W`` warm-up steps::

    s <  W:  lr = peak * (s + 1) / W                               (linear warm-up, 预热)
    s >= W:  lr = peak * (1 - (s - W) / (T - W))                   (linear decay)
             lr = peak * (1 + cos(pi * (s - W) / (T - W))) / 2     (cosine decay)

so no step is wasted at lr = 0: the first step uses ``peak / W`` and the last ``peak / (T - W)``
(linear). The model is any module whose ``forward(input_ids=, attention_mask=, labels=)`` returns an
object with ``.loss`` and whose ``generate(input_ids=, attention_mask=, max_new_tokens=,
do_sample=False, pad_token_id=)`` returns prompt + new tokens: a transformers model, a HF ``peft``
model or a ``peftedu.PeftModel``.

Profiles (``PEFTEDU_PROFILE``): ``quick`` (default) fits a CPU laptop -- a LoRA on ``topic`` beats
zero-shot in about a minute; ``full`` is a real GPU-sized run with the full test split.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import check_number
from .peak_memory import measure_peak_memory
from .compare import measured
from .tokenization import IGNORE_INDEX, TrainingCollator, tokenize_dataset


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """How big a run is. ``eval_rows=None`` evaluates the whole split."""

    name: str
    max_steps: int
    batch_size: int
    grad_accum: int
    lr: float
    warmup_steps: int
    schedule: str  # "linear", "cosine" or "constant" (after warm-up)
    max_length: int
    eval_rows: int | None
    eval_batch_size: int
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    weight_decay: float = 0.0

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum


PROFILES = {
    # CPU laptop: 12 steps x 8 examples of ~80 tokens; evaluation on the first 48 test rows.
    "quick": Profile(name="quick", max_steps=12, batch_size=4, grad_accum=2, lr=2e-3, warmup_steps=2,
                     schedule="linear", max_length=192, eval_rows=48, eval_batch_size=16),
    # One GPU: 3 epochs of the 400 training rows (batch 16), the full test split.
    "full": Profile(name="full", max_steps=75, batch_size=16, grad_accum=1, lr=1e-3, warmup_steps=8,
                    schedule="cosine", max_length=256, eval_rows=None, eval_batch_size=32),
}


def get_profile(name: str | Profile | None = None) -> Profile:
    """A :class:`Profile` by name; ``None`` reads ``PEFTEDU_PROFILE`` (default ``quick``)."""
    if isinstance(name, Profile):
        return name
    name = name or os.environ.get("PEFTEDU_PROFILE") or "quick"
    if name.strip().lower() not in PROFILES:
        raise ValueError(f"Unknown profile {name!r} (from --profile or PEFTEDU_PROFILE); choose one of "
                         f"{sorted(PROFILES)} (any case).")
    profile = PROFILES[name.strip().lower()]
    cap = os.environ.get("PEFTEDU_MAX_STEPS")  # a pass that only checks the code runs (scripts/run_series.py)
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise ValueError(f"PEFTEDU_MAX_STEPS={cap!r}: give a whole number of steps, at least 1, or unset it.")
        steps = min(profile.max_steps, int(cap))
        profile = replace(profile, max_steps=steps, warmup_steps=min(profile.warmup_steps, steps - 1),
                          eval_rows=min(profile.eval_rows or 16, 16))
    return profile


# ---------------------------------------------------------------------------------------------
# Seeding and the learning-rate schedule
# ---------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA devices


SCHEDULES = ("linear", "cosine", "constant")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "linear") -> float:
    """Factor applied to the peak learning rate at optimizer step ``step`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; choose one of {SCHEDULES}.")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}); got {warmup_steps}.")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 at the peak, < 1 at the last step
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainHistory:
    """What one ``train`` call did. ``loss[s]`` and ``lr[s]`` belong to optimizer step ``s``."""

    loss: list[float] = field(default_factory=list)  # mean loss over the label tokens of the step
    lr: list[float] = field(default_factory=list)  # learning rate of the first param group
    wall_time_s: float = 0.0
    tokens: int = 0  # non-pad tokens seen (attention_mask == 1), prompts included
    tokens_per_s: float = 0.0
    peak_memory_bytes: int | None = None  # above the memory in use when training started
    peak_memory_method: str = ""
    trainable_params: int = 0
    profile: str = ""
    step_time_s: list[float] = field(default_factory=list)  # wall time of each optimizer step

    @property
    def median_step_time_s(self) -> float:
        """Median seconds per optimizer step, the first (warm-up: lazy allocations) excluded when possible."""
        times = sorted(self.step_time_s[1:] or self.step_time_s)
        if not times:
            raise ValueError("No step was timed.")
        mid = len(times) // 2
        return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2

    @property
    def steps(self) -> int:
        return len(self.loss)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        memory = "n/a" if self.peak_memory_bytes is None else f"{self.peak_memory_bytes / 2**20:,.0f} MiB"
        return (f"{self.steps} steps in {self.wall_time_s:.1f} s, "
                f"loss {measured(self.loss[0])} -> {measured(self.loss[-1])}, "
                f"{self.tokens_per_s:,.0f} tokens/s, peak memory {memory}, "
                f"{self.trainable_params:,} trainable parameters")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _is_tokenized(data) -> bool:
    first = data[0]
    return "input_ids" in first and "labels" in first


def _count_label_tokens(batch: dict) -> int:
    """Tokens the causal-LM loss averages over: labels shifted by one, minus the -100s."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[dict], scaler=None) -> tuple[float, int]:
    """Backward over the micro-batches of one optimizer step; returns (mean loss, label tokens).

    ``scaler`` (a ``torch.amp.GradScaler``, for an fp16 base model): the forward pass runs under fp16
    autocast and the loss is multiplied by the scale before ``backward``.

    Each ``model(...).loss`` is a mean over its own label tokens ``n_i``; scaling it by ``n_i / N``
    (``N = sum n_i``) makes the summed gradient that of the mean over all ``N`` tokens.
    """
    total = sum(_count_label_tokens(b) for b in micro_batches)
    if total == 0:
        raise ValueError("This step has no label tokens (every label is -100); check the answers and max_length.")
    step_loss = 0.0
    for batch in micro_batches:
        n = _count_label_tokens(batch)
        if n == 0:
            continue
        with torch.autocast(batch["input_ids"].device.type, dtype=torch.float16, enabled=scaler is not None):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        scaled = loss * (n / total)
        (scaled if scaler is None else scaler.scale(scaled)).backward()
        step_loss += loss.item() * n / total
    return step_loss, total


def train(model, tokenizer, train_data, *, profile: str | Profile | None = None, max_steps: int | None = None,
          lr: float | None = None, batch_size: int | None = None, grad_accum: int | None = None,
          warmup_steps: int | None = None, schedule: str | None = None, max_length: int | None = None,
          optimizer: torch.optim.Optimizer | None = None, max_grad_norm: float | None = None,
          weight_decay: float | None = None, seed: int = 0, progress: bool = True) -> TrainHistory:
    """Fine-tune ``model`` on ``train_data``; every argument left ``None`` comes from the profile.

    ``train_data``: a ``datasets.Dataset`` or list of raw records (instruction/input/output; they are
    tokenized here with ``max_length``) or of tokenized examples (input_ids/attention_mask/labels).
    ``optimizer``: default AdamW over the parameters with ``requires_grad``; pass your own (e.g.
    LoRA+ with per-group learning rates) and its group learning rates are the peaks -- then ``lr``
    and ``weight_decay`` must stay ``None``. ``max_grad_norm``: clip the gradient norm (0 = off).
    ``warmup_steps``: the profile's value is shortened to ``max_steps - 1`` for shorter runs; an
    explicit value must be below ``max_steps``. Examples are drawn in a seeded random order, epoch after
    epoch, ``batch_size * grad_accum`` per optimizer step. The model is left in eval mode.
    """
    p = get_profile(profile)
    max_steps = p.max_steps if max_steps is None else max_steps
    batch_size = p.batch_size if batch_size is None else batch_size
    grad_accum = p.grad_accum if grad_accum is None else grad_accum
    schedule = schedule or p.schedule
    max_length = max_length or p.max_length
    max_grad_norm = p.max_grad_norm if max_grad_norm is None else max_grad_norm
    for name, value in (("max_steps", max_steps), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        check_number(name, value, integer=True)
    if warmup_steps is None:  # the profile's warm-up, shortened for runs of fewer steps than that
        warmup_steps = min(p.warmup_steps, max_steps - 1)
    lr_multiplier(0, max_steps, warmup_steps, schedule)  # validates schedule and warm-up early

    trainable = [param for param in model.parameters() if param.requires_grad]
    if not trainable:
        raise ValueError("The model has no parameter with requires_grad=True: nothing to train.")
    scaler = None
    if any(param.dtype == torch.float16 for param in model.parameters()):
        # fp16 (a GPU without bf16, see models.pick_precision): AdamW on fp16 weights loses small updates and
        # small gradients underflow. The standard recipe: fp32 trainable parameters, fp16 autocast, loss scaling.
        if optimizer is not None and any(param.dtype == torch.float16 for param in trainable):
            raise ValueError("fp16 trainable parameters: let train() build the optimizer (it first moves them to "
                             "fp32 for loss scaling), or cast them to fp32 yourself before making the optimizer.")
        for param in trainable:
            param.data = param.data.float()  # HF peft already keeps adapters in fp32 (autocast_adapter_dtype)
        scaler = torch.amp.GradScaler(trainable[0].device.type)
    if optimizer is None:
        optimizer = torch.optim.AdamW(trainable, lr=p.lr if lr is None else lr,
                                      weight_decay=p.weight_decay if weight_decay is None else weight_decay)
    elif lr is not None or weight_decay is not None:
        raise ValueError("Pass lr/weight_decay or an optimizer, not both: the optimizer's own group "
                         "learning rates are the peaks of the schedule.")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(min(s, max_steps - 1), max_steps, warmup_steps, schedule))

    set_seed(seed)
    if len(train_data) == 0:
        raise ValueError("train_data is empty.")
    examples = train_data if _is_tokenized(train_data) else tokenize_dataset(tokenizer, train_data, max_length)
    collate = TrainingCollator(tokenizer)
    device = model_device(model)
    order_generator = torch.Generator().manual_seed(seed)
    order: list[int] = []

    def next_examples(k: int) -> list[dict]:
        nonlocal order
        while len(order) < k:  # a new epoch in a new seeded order
            order += torch.randperm(len(examples), generator=order_generator).tolist()
        chosen, order = order[:k], order[k:]
        return [examples[i] for i in chosen]

    history = TrainHistory(trainable_params=sum(param.numel() for param in trainable), profile=p.name)

    def run_steps() -> None:
        bar = tqdm(range(max_steps), desc="train", disable=not progress)
        for _ in bar:
            step_start = time.perf_counter()
            step_examples = next_examples(batch_size * grad_accum)
            micro_batches = [
                {k: v.to(device) for k, v in collate(step_examples[i:i + batch_size]).items()}
                for i in range(0, len(step_examples), batch_size)
            ]
            history.lr.append(optimizer.param_groups[0]["lr"])
            loss, _ = accumulate_gradients(model, micro_batches, scaler)
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            if scaler is None:
                optimizer.step()
            else:  # skips the step when a gradient overflowed, and adapts the scale
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            if hasattr(model, "update_and_allocate"):  # AdaLoRA: reads the gradients, so before zero_grad
                model.update_and_allocate(len(history.loss) + 1)
            optimizer.zero_grad(set_to_none=True)
            history.loss.append(loss)
            if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize(device)
            history.step_time_s.append(time.perf_counter() - step_start)
            history.tokens += sum(int(b["attention_mask"].sum()) for b in micro_batches)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{history.lr[-1]:.2e}")

    model.train()
    start = time.perf_counter()
    # measure_peak_memory: CUDA allocator peak on a GPU, sampled process RSS on the CPU (above the start).
    memory = measure_peak_memory(run_steps, device=device, interval_s=0.01)
    model.eval()
    history.wall_time_s = time.perf_counter() - start
    history.tokens_per_s = history.tokens / history.wall_time_s
    history.peak_memory_bytes, history.peak_memory_method = memory.peak_bytes, memory.method
    return history


def plot_history(history: TrainHistory, ax=None):
    """Loss per step (left axis) and learning rate (right axis, dashed); returns the loss axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, history.steps + 1)
    ax.plot(steps, history.loss, marker="o", markersize=3, label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{history.steps} steps, {history.wall_time_s:.0f} s, {history.tokens_per_s:,.0f} tokens/s")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, history.lr, color="tab:orange", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    return ax
