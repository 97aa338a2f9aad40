"""The showdown: every method trained on the same task, model, token budget and seed, measured side by side.

    python -m peftedu showdown                       # CPU, SmolLM2-135M, quick profile -> results/showdown_cpu.*
    python -m peftedu showdown --smoke               # seconds: a tiny random model, 2 steps (CI)
    PEFTEDU_MODEL=tinyllama-1.1b python -m peftedu showdown --profile full   # on a GPU (bf16)

Each run (one method, one implementation) starts in its own Python process, so that its peak memory
is its own and not what an earlier run left in the allocator; a run does, in order:

1. load the base model and time one forward pass over a fixed batch of test prompts (the base latency);
2. attach the method (``peftedu`` or HF ``peft``), count trainable parameters;
3. train with the profile's steps, batch and seed (the same examples in the same order for every run:
   the same token budget) -- median time per step, tokens/s, peak memory above the start;
4. score the task and the retention probe (forgetting = the base model's retention minus this one);
5. time the forward pass again, unmerged, and merged where the method can merge.

Memory on a CPU is the process's resident set size sampled during training (the allocator keeps large
blocks returned to the system by setting ``MALLOC_MMAP_THRESHOLD_``, so what is freed is seen as freed);
on CUDA it is ``torch.cuda.max_memory_allocated``. Model FLOPs utilisation (GPU only) counts
``6 N`` FLOPs per token for full fine-tuning and ``4 N`` for a frozen base (forward ``2N``, backward to the
activations ``2N``; the adapters' own FLOPs are left out), against the device's dense bf16 peak.

This module is the harness (methods, one run, the showdown, its command line); a run starts from
:mod:`.showdown_setup`; serving is :mod:`.showdown_serving`, the files :mod:`.showdown_report`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..adalora import AdaLoraConfig
from ..adapters import AdapterConfig
from ..bitfit import BitFitConfig
from ..config import PeftConfig, check_number
from ..counting import count_parameters
from ..ia3 import IA3Config
from ..llama_adapter import AdaptionPromptConfig
from ..lora import LoraConfig
from ..loraplus import create_loraplus_optimizer
from ..p_tuning import PromptEncoderConfig
from ..peft_model import get_peft_model
from ..prefix_tuning import PrefixTuningConfig, prefix_from_text
from ..prompt_tuning import PromptTuningConfig
from ..quant import quantize_model
from . import lowrank, throughput
from .data import load_task
from .showdown_report import compare_with_peft, write_results
from .showdown_serving import serving_benchmark
from .showdown_setup import (LLAMA_ATTN, Settings, _append_log, _more_logged_pairs, forward_latency, latency_batch,
                             load_log, load_model, logged_runs, peak_flops)
from .training import get_profile, model_device, set_seed, train
from .evaluation import evaluate

#: the text that prompt and prefix tuning start from, per task (Lester et al.; Li & Liang)
TEXT_INITS = {"topic": "Classify the topic of the sentence as sports, cooking, travel or technology.",
              "extract": "Extract the name, age and city of the person as one line of JSON.",
              "lexicon": "Translate each Velish word into its English word."}
TEXT_INIT = TEXT_INITS["topic"]


@dataclass(frozen=True)
class Method:
    """One row of the showdown: peftedu's ``config_class`` built from ``kwargs(model, tokenizer, profile)``; HF
    peft's class of the same name takes the same kwargs (its twin, where peft has the method)."""

    name: str
    family: str
    lr: float
    kind: str  # "peft": a config both libraries have; "ours": peftedu only; "full"; "qlora"; "loraplus"
    config_class: type[PeftConfig] | None = None  # None for full fine-tuning
    kwargs: Callable | None = None  # (model, tokenizer, profile) -> the config's keyword arguments
    mergeable: bool = False
    note: str = ""


def _lora(**extra):
    return lambda model, tok, prof: dict(r=8, lora_alpha=16, target_modules=LLAMA_ATTN, **extra)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("full", "baseline", 5e-5, "full", note="every parameter trained (the reference)"),
    Method("bitfit", "selective", 1e-3, "ours", BitFitConfig, lambda model, tok, prof: {},
           note="adds zero-initialised biases: Llama has none; peft has no BitFit"),
    Method("prompt_tuning", "soft prompt", 3e-2, "peft", PromptTuningConfig, lambda model, tok, prof: dict(
        num_virtual_tokens=16, prompt_tuning_init="TEXT", prompt_tuning_init_text=TEXT_INIT,  # attach: the task's
        tokenizer_name_or_path=tok.name_or_path)),
    Method("p_tuning", "soft prompt", 3e-3, "peft", PromptEncoderConfig, lambda model, tok, prof: dict(
        num_virtual_tokens=16, encoder_hidden_size=128)),
    Method("prefix_tuning", "soft prompt", 1e-2, "peft", PrefixTuningConfig, lambda model, tok, prof: dict(
        num_virtual_tokens=16), note="prefix initialised from text (Li & Liang), in both libraries"),
    Method("houlsby", "adapter", 1e-3, "ours", AdapterConfig, lambda model, tok, prof: dict(adapter_type="houlsby"),
           note="peft has no bottleneck adapters"),
    Method("pfeiffer", "adapter", 1e-3, "ours", AdapterConfig, lambda model, tok, prof: dict(adapter_type="pfeiffer"),
           note="peft has no bottleneck adapters"),
    Method("llama_adapter", "adapter", 1e-2, "peft", AdaptionPromptConfig, lambda model, tok, prof: dict(
        adapter_len=10, adapter_layers=min(30, model.config.num_hidden_layers))),
    Method("lora", "reparametrisation", 2e-3, "peft", LoraConfig, _lora(), mergeable=True),
    Method("rslora", "reparametrisation", 2e-3, "peft", LoraConfig, _lora(use_rslora=True), mergeable=True),
    Method("loraplus", "reparametrisation", 2e-3, "loraplus", LoraConfig, _lora(), mergeable=True,
           note="LoRA with B's learning rate x16 (loraplus_lr_ratio)"),
    Method("dora", "reparametrisation", 2e-3, "peft", LoraConfig, _lora(use_dora=True), mergeable=True),
    Method("adalora", "reparametrisation", 5e-3, "peft", AdaLoraConfig, lambda model, tok, prof: dict(
        init_r=12, target_r=8, total_step=prof.max_steps, tinit=min(2, prof.max_steps // 4),
        tfinal=min(2, prof.max_steps // 4), deltaT=max(1, min(2, prof.max_steps // 4)),
        target_modules=LLAMA_ATTN), mergeable=True),
    Method("ia3", "rescaling", 3e-3, "peft", IA3Config, lambda model, tok, prof: {}, mergeable=True),
    Method("qlora", "reparametrisation", 2e-3, "qlora", LoraConfig, _lora(),
           note="NF4 + double quantization base (peftedu.quant); peft's QLoRA needs bitsandbytes on CUDA"),
]}


# ---------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------
def attach(model, tokenizer, method: Method, impl: str, settings: Settings, profile):
    """Wrap the base model with the method; returns (model to train, optimizer or None)."""
    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, None
    if method.kind == "qlora":
        quantize_model(model)
    kwargs = method.kwargs(model, tokenizer, profile) | (settings.overrides or {})
    text_init = TEXT_INITS.get(settings.task, TEXT_INIT)
    if "prompt_tuning_init_text" in kwargs:
        kwargs["prompt_tuning_init_text"] = text_init
    if impl == "peft":
        if method.kind == "ours":
            raise ValueError(f"peft has no {method.name}.")
        import peft  # here, not at the top: HF peft is an optional (dev) dependency, needed by the twins only

        peft_class = getattr(peft, method.config_class.__name__)  # peft's class of the same name: the twin
        wrapped = peft.get_peft_model(model, peft_class(task_type="CAUSAL_LM", **kwargs))
    else:
        if method.config_class is PromptTuningConfig:
            kwargs = {k: v for k, v in kwargs.items() if k != "tokenizer_name_or_path"} | {"tokenizer": tokenizer}
        wrapped = get_peft_model(model, method.config_class(**kwargs))
    if method.config_class is PrefixTuningConfig:  # the same text initialisation for both (N(0, 1) barely trains here)
        with torch.no_grad():
            wrapped.prompt_encoder["default"].embedding.weight.copy_(
                prefix_from_text(model, tokenizer, _filled(tokenizer, text_init, kwargs["num_virtual_tokens"]),
                                 kwargs["num_virtual_tokens"]))
    optimizer = None
    if method.kind == "loraplus":
        if impl == "peft":
            from peft.optimizers import create_loraplus_optimizer as create  # optional, as above
        else:
            create = create_loraplus_optimizer
        optimizer = create(model=wrapped, optimizer_cls=torch.optim.AdamW, lr=settings.lr or method.lr,
                           loraplus_lr_ratio=16)
    return wrapped, optimizer


def _filled(tokenizer, text: str, n: int) -> str:
    """``text`` repeated until it has ``n`` tokens (a short init text fills the prefix as prompt tuning's does)."""
    return next(t for k in range(1, n + 1) if len(tokenizer(t := " ".join([text] * k))["input_ids"]) >= n)


def run_one(method_name: str, impl: str, settings: Settings) -> dict:
    """Everything the showdown measures for one method and one implementation (see the module docstring)."""
    method = METHODS[method_name]
    profile = get_profile(settings.profile)
    set_seed(settings.seed)
    model, tokenizer, weights = load_model(settings)
    device = model_device(model)
    batch = latency_batch(tokenizer, settings, device)
    base_params = sum(p.numel() for p in model.parameters())
    base_latency = forward_latency(model, batch, settings.latency_repeats)

    before = lowrank.snapshot(model) if settings.delta_w and method.kind == "full" else None
    set_seed(settings.seed)
    wrapped, optimizer = attach(model, tokenizer, method, impl, settings, profile)
    lr = settings.lr or method.lr
    trainable, total = count_parameters(wrapped)
    # what is resident before training (weights, adapters): the peak below is measured above it
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    history = train(wrapped, tokenizer, load_task(settings.task, "train"), profile=profile,
                    max_steps=settings.max_steps, optimizer=optimizer,
                    lr=None if optimizer is not None else lr, seed=settings.seed, progress=False)
    scored = not settings.random_weights  # random weights score nothing: such a run measures cost only
    score = evaluate(wrapped, tokenizer, settings.task, profile=profile, rows=settings.eval_rows) if scored else None
    validation = evaluate(wrapped, tokenizer, settings.task, split="validation", profile=profile,
                          rows=settings.eval_rows) if scored and settings.validation else None
    spectra = None if before is None else lowrank.update_spectra(before, wrapped)
    twin = impl == "peft"  # a peft twin is compared on time, memory and score; forgetting and latency: ours only
    retention = None if twin or not scored else evaluate(wrapped, tokenizer, "retention", profile=profile,
                                                         rows=settings.eval_rows if settings.eval_rows else "all")
    unmerged_latency = None if twin else forward_latency(wrapped, batch, settings.latency_repeats)
    merged_latency = None
    if method.mergeable and not twin:
        merged = wrapped.merge_and_unload()
        merged_latency = forward_latency(merged, batch, settings.latency_repeats)
    step_s = history.median_step_time_s
    tokens_per_step = history.tokens / max(history.steps, 1)
    flops_per_token = (6 if method.kind == "full" else 4) * base_params
    peak = peak_flops(device)
    return {
        "method": method.name, "impl": impl, "family": method.family, "lr": lr, "seed": settings.seed,
        "repeat": settings.repeat,
        "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
        "steps": history.steps, "tokens": history.tokens,
        "time_per_step_s": step_s, "tokens_per_s": tokens_per_step / step_s,
        "peak_memory_mb": None if history.peak_memory_bytes is None else history.peak_memory_bytes / 1e6,
        "memory_method": history.peak_memory_method,
        "resident_mb": None if resident is None else resident / 1e6,
        "loss_first": history.loss[0], "loss_last": history.loss[-1],
        "score": None if score is None else score["score"], "eval_rows": None if score is None else score["n"],
        "val_score": None if validation is None else validation["score"],
        "retention": None if retention is None else retention["score"],
        "retention_answers": None if retention is None else [e["prediction"] for e in retention["examples"]],
        "latency_base_s": base_latency,
        "latency_unmerged_rel": None if twin else unmerged_latency / base_latency,
        "latency_merged_rel": None if merged_latency is None else merged_latency / base_latency,
        "mfu": None if peak is None else flops_per_token * tokens_per_step / step_s / peak,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", "") if method.kind != "qlora" else "nf4+fp32",
        "model": getattr(model, "name_or_path", None) or str(settings.model), "weights": weights,
        "note": method.note, "overrides": settings.overrides,
        **({} if spectra is None else {"delta_w": spectra}),
    }


def run_isolated(method_name: str, impl: str, settings: Settings) -> dict:
    """``run_one`` in a fresh Python process (its own peak memory); returns its row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TOKENIZERS_PARALLELISM="false")
        cmd = [sys.executable, "-m", "peftedu", "showdown", "--worker", method_name, impl, settings.to_json(),
               "--worker-out", str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"showdown run {method_name}/{impl} failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------
# The whole showdown
# ---------------------------------------------------------------------------------------------------
def baseline_scores(settings: Settings) -> dict:
    """The base model's task score and retention, for forgetting (none for random weights)."""
    if settings.random_weights:  # nothing to score: the weights were never trained
        return {"score": None, "retention": None, "eval_rows": 0}
    profile = get_profile(settings.profile)
    model, tokenizer, _ = load_model(settings)
    task = evaluate(model, tokenizer, settings.task, profile=profile, rows=settings.eval_rows)
    retention = evaluate(model, tokenizer, "retention", profile=profile,
                         rows=settings.eval_rows if settings.eval_rows else "all")
    return {"score": task["score"], "retention": retention["score"], "eval_rows": task["n"]}


def showdown(settings: Settings, methods: list[str] | None = None, with_peft: bool = True, isolate: bool = True,
             serving: bool = True, progress: bool = True, log: Path | None = None, run: bool = True,
             repeats: int = 1) -> dict:
    """Run every method (and its peft twin), return ``{"rows", "baseline", "serving", ...}``.

    ``log``: a JSON Lines file; each finished run is appended to it, and runs it already holds (with the same
    settings) are not repeated. Several processes may share it (e.g. ``--methods`` split in two on two cores);
    a last call with every method then only collects. ``run=False``: collect only, never train.
    ``repeats``: run each peftedu/peft pair ``repeats - 1`` more times, alternating which goes first; each time and
    memory ratio is then the median over the pairs (:func:`.showdown_report.compare_with_peft`). More pairs that the
    log already holds for some methods are used too."""
    check_number("repeats", repeats, integer=True, at_least=1)
    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; the showdown knows {list(METHODS)}.")
    jobs = [(m, "peftedu") for m in methods]
    if with_peft:  # each peft twin right after its peftedu run, so both see the same machine load
        jobs = [job for m in methods for job in
                ([(m, "peftedu"), (m, "peft")] if METHODS[m].kind in ("peft", "loraplus") else [(m, "peftedu")])]
    logged = load_log(log, settings)
    baseline = next((e["baseline"] for e in logged if "baseline" in e), None)
    if baseline is None:
        if not run:
            raise ValueError(f"The log {log} has no baseline (and no run) with these settings.")
        baseline = baseline_scores(settings)
        _append_log(log, {"baseline": baseline}, settings)
    done = logged_runs(log, settings)
    rows = []
    bar = tqdm(jobs, desc="showdown", disable=not progress)
    for method_name, impl in bar:
        bar.set_postfix(method=f"{method_name}/{impl}")
        row = done.get((method_name, impl))
        if row is None:
            if not run:
                raise ValueError(f"The log {log} has no run {method_name}/{impl} with these settings.")
            row = run_isolated(method_name, impl, settings) if isolate else run_one(method_name, impl, settings)
            row["forgetting"] = None if row["retention"] is None else baseline["retention"] - row["retention"]
            _append_log(log, {"row": row}, settings)
        rows.append(row)
    again = []
    twins = [m for m in methods if with_peft and METHODS[m].kind in ("peft", "loraplus")]
    for k in range(1, repeats):  # interleaved: pair by pair, the order flipped every other repeat
        settings_k = replace(settings, repeat=k)
        done_k = logged_runs(log, settings_k)
        for method_name in twins:
            for impl in ("peft", "peftedu") if k % 2 else ("peftedu", "peft"):
                row = done_k.get((method_name, impl))
                if row is None:
                    if not run:
                        raise ValueError(f"The log {log} has no repeat {k} of {method_name}/{impl}.")
                    row = run_isolated(method_name, impl, settings_k) if isolate else run_one(method_name, impl, settings_k)
                    _append_log(log, {"row": row}, settings_k)
                again.append(row)
    again += _more_logged_pairs(log, settings, twins, repeats)
    compare_with_peft(rows, again)
    first = rows[0]
    return {"rows": rows, "baseline": baseline, "settings": settings.__dict__,
            "serving": serving_benchmark(settings) if serving else None,
            "model": first["model"], "device": first["device"], "weights": first["weights"],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def add_arguments(parser) -> None:
    """The showdown's own options (``--model`` and ``--profile`` are added by the command line, as for tour)."""
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), metavar="METHOD",
                        help=f"a subset of: {', '.join(METHODS)} (default: all)")
    parser.add_argument("--task", default="topic", choices=["topic", "extract", "lexicon"],
                        help="the task every method is trained and scored on (default: topic)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the seed of every run: data order and initialisation (default: 0)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"],
                        help="where to train (default: cuda, else mps, else cpu)")
    parser.add_argument("--out", default="results", metavar="FOLDER",
                        help="where the CSV, Markdown, JSON and plots are written (default: results)")
    parser.add_argument("--no-peft", action="store_true", help="skip the HF peft twins")
    parser.add_argument("--log", default=None, metavar="FILE",
                        help="JSON Lines log of finished runs, reused with the same settings "
                             "(default: OUT/showdown_runs.jsonl)")
    parser.add_argument("--no-serving", action="store_true", help="skip the many-adapters serving benchmark")
    parser.add_argument("--repeats", type=int, default=1, metavar="K",
                        help="time each peftedu/peft pair K times, interleaved, and report the median ratio "
                             "(default: 1)")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the model from its shipped config with random weights (no download; no scores)")
    parser.add_argument("--smoke", action="store_true",
                        help="the whole pipeline on a tiny random model: 2 steps, 4 eval rows, one process, "
                             "about 2 minutes (CI)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="train each method for N steps instead of the profile's, e.g. to measure peak memory "
                             "(default: the profile's)")
    parser.add_argument("--grid", action="store_true", help="instead: learning rates chosen on validation, 3 seeds "
                        "on test, mean ± sd (peftedu/course/showdown_grid.py; lexicon, 36 steps; about an hour)")
    parser.add_argument("--study", action="store_true", help="instead, after --grid: LoRA's rank sweep and source "
                        "003's tips (peftedu/course/lora_study.py; 20 runs, about 75 minutes on two CPU cores)")
    parser.add_argument("--throughput", action="store_true",
                        help="instead: time LoRA, HF peft's LoRA and full fine-tuning on packed sequences at a realistic "
                             "length, with MFU (peftedu/course/throughput.py; random weights of --model, a shipped config; "
                             "default: off)")
    parser.add_argument("--seq-len", type=int, default=2048, help="--throughput: tokens per packed sequence (default: 2048)")
    parser.add_argument("--batch-size", type=int, default=8, help="--throughput: sequences per step (default: 8)")
    parser.add_argument("--steps", type=int, default=10, help="--throughput: timed steps per method (default: 10)")
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)


def main(args) -> None:
    if args.worker:
        method_name, impl, settings_json = args.worker
        row = run_one(method_name, impl, Settings(**json.loads(settings_json)))
        Path(args.worker_out).write_text(json.dumps(row))
        return
    if args.throughput:
        return throughput.main(args)
    if args.smoke:
        settings = Settings(model="tiny-random", task=args.task, profile="quick", max_steps=2, eval_rows=4,
                            latency_rows=2, latency_repeats=1, device="cpu")
    else:
        model = args.model or os.environ.get("PEFTEDU_MODEL")
        config = Path(str(model)) / "config.json"
        if config.exists() and json.loads(config.read_text()).get("peftedu_random_weights"):
            args.random_weights = True  # a random-weight folder: nothing to score, the run measures cost only
        settings = Settings(model=model, task=args.task,
                            profile=get_profile(args.profile).name, device=args.device, seed=args.seed,
                            random_weights=args.random_weights, max_steps=args.max_steps)
    command = "python -m peftedu showdown " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["showdown"] else [])
    log = None if args.smoke else Path(args.log or Path(args.out) / "showdown_runs.jsonl")
    result = showdown(settings, methods=args.methods, with_peft=not args.no_peft, isolate=not args.smoke,
                      serving=not args.no_serving, log=log, repeats=args.repeats)
    result["command"] = command.strip()
    device = result["device"]
    stem = "showdown_smoke" if args.smoke else ("showdown_cpu" if device == "cpu" else
                                                 "showdown_gpu_" + device.replace(" ", "_").lower())
    paths = write_results(result, Path(args.out), stem)
    print(Path(paths["md"]).read_text())
    print("wrote", ", ".join(str(p) for p in paths.values()))
