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
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

LLAMA_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
TEXT_INIT = "Classify the topic of the sentence as sports, cooking, travel or technology."
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for model FLOPs utilisation
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass(frozen=True)
class Method:
    """One row of the showdown. The kwargs ``config`` returns are shared by peftedu and peft."""

    name: str
    family: str
    lr: float
    kind: str  # "peft": a config both libraries have; "ours": peftedu only; "full"; "qlora"; "loraplus"
    config: Callable | None = None  # (model, tokenizer, profile) -> (config class name, kwargs)
    mergeable: bool = False
    note: str = ""


def _lora(**extra):
    return lambda model, tok, prof: ("LoraConfig", dict(r=8, lora_alpha=16, target_modules=LLAMA_ATTN, **extra))


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("full", "baseline", 5e-5, "full", note="every parameter trained (the reference)"),
    Method("bitfit", "selective", 1e-3, "ours", lambda model, tok, prof: ("BitFitConfig", {}),
           note="adds zero-initialised biases: Llama has none; peft has no BitFit"),
    Method("prompt_tuning", "soft prompt", 3e-2, "peft", lambda model, tok, prof: ("PromptTuningConfig", dict(
        num_virtual_tokens=16, prompt_tuning_init="TEXT", prompt_tuning_init_text=TEXT_INIT,
        tokenizer_name_or_path=tok.name_or_path))),
    Method("p_tuning", "soft prompt", 3e-3, "peft", lambda model, tok, prof: ("PromptEncoderConfig", dict(
        num_virtual_tokens=16, encoder_hidden_size=128))),
    Method("prefix_tuning", "soft prompt", 1e-2, "peft", lambda model, tok, prof: ("PrefixTuningConfig", dict(
        num_virtual_tokens=16)), note="prefix initialised from text (Li & Liang), in both libraries"),
    Method("houlsby", "adapter", 1e-3, "ours", lambda model, tok, prof: ("AdapterConfig", dict(adapter_type="houlsby")),
           note="peft has no bottleneck adapters"),
    Method("pfeiffer", "adapter", 1e-3, "ours", lambda model, tok, prof: ("AdapterConfig", dict(adapter_type="pfeiffer")),
           note="peft has no bottleneck adapters"),
    Method("llama_adapter", "adapter", 1e-2, "peft", lambda model, tok, prof: ("AdaptionPromptConfig", dict(
        adapter_len=10, adapter_layers=min(30, model.config.num_hidden_layers)))),
    Method("lora", "reparametrisation", 2e-3, "peft", _lora(), mergeable=True),
    Method("rslora", "reparametrisation", 2e-3, "peft", _lora(use_rslora=True), mergeable=True),
    Method("loraplus", "reparametrisation", 2e-3, "loraplus", _lora(), mergeable=True,
           note="LoRA with B's learning rate x16 (loraplus_lr_ratio)"),
    Method("dora", "reparametrisation", 2e-3, "peft", _lora(use_dora=True), mergeable=True),
    Method("adalora", "reparametrisation", 5e-3, "peft", lambda model, tok, prof: ("AdaLoraConfig", dict(
        init_r=12, target_r=8, total_step=prof.max_steps, tinit=min(2, prof.max_steps // 4),
        tfinal=min(2, prof.max_steps // 4), deltaT=max(1, min(2, prof.max_steps // 4)),
        target_modules=LLAMA_ATTN)), mergeable=True),
    Method("ia3", "rescaling", 3e-3, "peft", lambda model, tok, prof: ("IA3Config", {}), mergeable=True),
    Method("qlora", "reparametrisation", 2e-3, "qlora", _lora(),
           note="NF4 + double quantization base (peftedu.quant); peft's QLoRA needs bitsandbytes on CUDA"),
]}

@dataclass
class Settings:
    model: str | None = None  # alias, hub id or folder; "tiny-random" for the smoke run
    task: str = "topic"
    profile: str = "quick"
    seed: int = 0
    device: str | None = None
    max_steps: int | None = None  # overrides the profile (smoke)
    eval_rows: int | None = None
    latency_rows: int = 8
    latency_repeats: int = 3
    random_weights: bool = False  # GPU benchmark when the real weights can't be fetched

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


# ---------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------
def load_model(settings: Settings):
    """The base model and tokenizer for a run (``tiny-random``: 2 small layers, SmolLM2's tokenizer)."""
    from .models import MODEL_ALIASES, build_from_config, default_dtype, load_base, pick_device

    if settings.model == "tiny-random":
        from transformers import LlamaConfig, LlamaForCausalLM

        _, tokenizer = load_base(None, device="cpu")
        torch.manual_seed(settings.seed)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(config).eval()
        model.name_or_path = "tiny-random"
        return model, tokenizer, "random (tiny smoke model)"
    if settings.random_weights and Path(str(settings.model)).is_dir():  # written by scripts/random_model.py
        model, tokenizer = load_base(settings.model, device=settings.device)
        return model, tokenizer, f"random (a {model.config.model_type} folder from scripts/random_model.py)"
    if settings.random_weights:
        from .models import load_model_config
        from transformers import AutoTokenizer

        device = pick_device(settings.device)
        torch.manual_seed(settings.seed)
        model = build_from_config(settings.model, device=device, dtype=default_dtype(device))
        vocab = load_model_config(settings.model).vocab_size
        named = os.environ.get("PEFTEDU_TOKENIZER")  # a tokenizer folder (or hub id) chosen by the user
        source = named or MODEL_ALIASES.get(settings.model, settings.model)
        try:  # the model's own tokenizer (a few MB) when the hub is reachable, or the one named
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):  # offline: the default model's tokenizer, if its ids fit the embedding table
            if named:
                raise ValueError(f"PEFTEDU_TOKENIZER={named!r} could not be loaded: name a folder that holds "
                                 f"tokenizer.json (or a hub id, when the hub is reachable).") from None
            _, tokenizer = load_base(None, device="cpu")
            source = "SmolLM2-135M-Instruct (bundled)"
        if len(tokenizer) > vocab:
            raise ValueError(f"{settings.model} has {vocab} embeddings but the tokenizer from {source} has "
                             f"{len(tokenizer)} tokens; set PEFTEDU_TOKENIZER to the model's own tokenizer folder, "
                             f"or connect to the hub once to fetch it.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the tokenizer's name only: a folder's full path belongs to one machine and says nothing to a reader
        label = "PEFTEDU_TOKENIZER folder" if named and Path(named).exists() else source
        return model, tokenizer, f"random (shipped config; real weights not reachable); tokenizer: {label}"
    model, tokenizer = load_base(settings.model, device=settings.device)
    return model, tokenizer, "pretrained"


def latency_batch(tokenizer, settings: Settings, device) -> dict:
    from .data import collate_for_generation, load_task
    from .training import _as_prompt

    rows = load_task(settings.task, "test").select(range(settings.latency_rows))
    prompts = [_as_prompt(tokenizer, record) for record in rows]
    return {k: v.to(device) for k, v in collate_for_generation(tokenizer, prompts).items()}


def forward_latency(model, batch: dict, repeats: int) -> float:
    """Median seconds of one forward pass (the prefill of a batch of prompts), after one warm-up pass."""
    device = batch["input_ids"].device
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def attach(model, tokenizer, method: Method, impl: str, settings: Settings, profile):
    """Wrap the base model with the method; returns (model to train, optimizer or None)."""
    import peft

    import peftedu

    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, None
    if method.kind == "qlora":
        from ..quant import quantize_model

        quantize_model(model)
    class_name, kwargs = method.config(model, tokenizer, profile)
    if impl == "peft":
        if method.kind == "ours":
            raise ValueError(f"peft has no {method.name}.")
        wrapped = peft.get_peft_model(model, getattr(peft, class_name)(task_type="CAUSAL_LM", **kwargs))
    else:
        if class_name == "PromptTuningConfig":
            kwargs = {k: v for k, v in kwargs.items() if k != "tokenizer_name_or_path"} | {"tokenizer": tokenizer}
        wrapped = peftedu.get_peft_model(model, getattr(peftedu, class_name)(**kwargs))
    if class_name == "PrefixTuningConfig":  # the same text initialisation for both (N(0, 1) barely trains here)
        from ..prefix_tuning import prefix_from_text

        with torch.no_grad():
            wrapped.prompt_encoder["default"].embedding.weight.copy_(
                prefix_from_text(model, tokenizer, TEXT_INIT, kwargs["num_virtual_tokens"]))
    optimizer = None
    if method.kind == "loraplus":
        from peft.optimizers import create_loraplus_optimizer as peft_loraplus

        create = peft_loraplus if impl == "peft" else peftedu.create_loraplus_optimizer
        optimizer = create(model=wrapped, optimizer_cls=torch.optim.AdamW, lr=method.lr, loraplus_lr_ratio=16)
    return wrapped, optimizer


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def run_one(method_name: str, impl: str, settings: Settings) -> dict:
    """Everything the showdown measures for one method and one implementation (see the module docstring)."""
    from ..counting import count_parameters
    from .data import load_task
    from .training import evaluate, get_profile, model_device, set_seed, train

    method = METHODS[method_name]
    profile = get_profile(settings.profile)
    set_seed(settings.seed)
    model, tokenizer, weights = load_model(settings)
    device = model_device(model)
    batch = latency_batch(tokenizer, settings, device)
    base_params = sum(p.numel() for p in model.parameters())
    base_latency = forward_latency(model, batch, settings.latency_repeats)

    set_seed(settings.seed)
    wrapped, optimizer = attach(model, tokenizer, method, impl, settings, profile)
    trainable, total = count_parameters(wrapped)
    # what is resident before training (weights, adapters): the peak below is measured above it
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    history = train(wrapped, tokenizer, load_task(settings.task, "train"), profile=profile,
                    max_steps=settings.max_steps, optimizer=optimizer,
                    lr=None if optimizer is not None else method.lr, seed=settings.seed, progress=False)
    scored = not settings.random_weights  # random weights score nothing: such a run measures cost only
    score = evaluate(wrapped, tokenizer, settings.task, profile=profile, rows=settings.eval_rows) if scored else None
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
        "method": method.name, "impl": impl, "family": method.family, "lr": method.lr,
        "trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total,
        "steps": history.steps, "tokens": history.tokens,
        "time_per_step_s": step_s, "tokens_per_s": tokens_per_step / step_s,
        "peak_memory_mb": None if history.peak_memory_bytes is None else history.peak_memory_bytes / 1e6,
        "memory_method": history.peak_memory_method,
        "resident_mb": None if resident is None else resident / 1e6,
        "loss_first": history.loss[0], "loss_last": history.loss[-1],
        "score": None if score is None else score["score"], "eval_rows": None if score is None else score["n"],
        "retention": None if retention is None else retention["score"],
        "latency_base_s": base_latency,
        "latency_unmerged_rel": None if twin else unmerged_latency / base_latency,
        "latency_merged_rel": None if merged_latency is None else merged_latency / base_latency,
        "mfu": None if peak is None else flops_per_token * tokens_per_step / step_s / peak,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", "") if method.kind != "qlora" else "nf4+fp32",
        "model": getattr(model, "name_or_path", None) or str(settings.model), "weights": weights,
        "note": method.note,
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
    from .training import evaluate, get_profile

    if settings.random_weights:  # nothing to score: the weights were never trained
        return {"score": None, "retention": None, "eval_rows": 0}
    profile = get_profile(settings.profile)
    model, tokenizer, _ = load_model(settings)
    task = evaluate(model, tokenizer, settings.task, profile=profile, rows=settings.eval_rows)
    retention = evaluate(model, tokenizer, "retention", profile=profile,
                         rows=settings.eval_rows if settings.eval_rows else "all")
    return {"score": task["score"], "retention": retention["score"], "eval_rows": task["n"]}


def serving_benchmark(settings: Settings, n_adapters: int = 8, rows_per_adapter: int = 2, repeats: int = 3) -> dict:
    """8 LoRA adapters on one base: one mixed batch (each row its own adapter) vs one request at a time."""
    import peftedu

    model, tokenizer, _ = load_model(settings)
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    wrapped = peftedu.get_peft_model(model, peftedu.LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_ATTN),
                                     adapter_name="a0")
    for i in range(1, n_adapters):
        wrapped.add_adapter(f"a{i}", peftedu.LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_ATTN))
    with torch.no_grad():  # trained adapters differ; give each its own non-zero B so the outputs differ too
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    names = [f"a{i}" for i in range(n_adapters) for _ in range(rows_per_adapter)]
    batch = latency_batch(tokenizer, Settings(**{**settings.__dict__, "latency_rows": len(names)}), device)
    wrapped.eval()

    def mixed():
        return wrapped(**batch, adapter_names=names).logits

    def switching():
        outputs = []
        for row, name in enumerate(names):
            wrapped.set_adapter(name)
            outputs.append(wrapped(input_ids=batch["input_ids"][row:row + 1],
                                   attention_mask=batch["attention_mask"][row:row + 1]).logits)
        return torch.cat(outputs)

    def timed(fn):
        times = []
        with torch.no_grad():
            result = fn()  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        return result, statistics.median(times)

    mixed_logits, mixed_s = timed(mixed)
    switch_logits, switch_s = timed(switching)
    keep = batch["attention_mask"].bool()  # compare real tokens only (pads differ by design)
    max_diff = (mixed_logits - switch_logits)[keep].abs().max().item()
    with torch.no_grad():  # the same rows all through adapter a0: how much the choice of adapter matters
        one_adapter = wrapped(**batch, adapter_names=["a0"] * len(names)).logits
    distinct = (mixed_logits - one_adapter)[keep].abs().max().item()
    return {"adapters": n_adapters, "requests": len(names), "mixed_batch_s": mixed_s, "switching_s": switch_s,
            "throughput_ratio": switch_s / mixed_s, "max_logit_diff": max_diff,
            "adapters_differ_by": distinct, "dtype": str(mixed_logits.dtype).removeprefix("torch."),
            "max_abs_logit": mixed_logits[keep].abs().max().item()}


def serving_verdict(serving: dict) -> str:
    """How the mixed batch compares with switching, against the rounding its dtype allows (never 'same' beyond it).

    The tolerance is :func:`peftedu.course.compare.rounding_tolerance` at the size of the largest logit (10 ε · |logit|):
    in fp32 the two routes agree far inside it; in bf16 one rounding of a logit of 20 is already 0.06.
    """
    from .compare import rounding_tolerance

    diff = serving["max_logit_diff"]
    if diff == 0.0:
        return "the same logits, bit for bit"
    if "dtype" not in serving or "max_abs_logit" not in serving:  # an older run recorded neither
        between = serving.get("adapters_differ_by")
        return (f"logits within {diff:.1e} of each other"
                + (f", against {between:.1f} between two adapters" if between is not None else "")
                + " (its dtype was not recorded, so no rounding tolerance is stated)")
    tol = rounding_tolerance(getattr(torch, serving["dtype"]), magnitude=serving["max_abs_logit"])
    relation = "within" if diff <= tol else "beyond"
    return (f"logits {relation} {serving['dtype']} rounding: max difference {diff:.1e} against a tolerance of "
            f"{tol:.1e} (10 ε × the largest logit, {serving['max_abs_logit']:.1f}), while two different adapters "
            f"differ by {serving['adapters_differ_by']:.1f}")


def compare_with_peft(rows: list[dict]) -> None:
    """Add peftedu/peft ratios to each peftedu row that has a peft twin."""
    by_key = {(r["method"], r["impl"]): r for r in rows}
    for row in rows:
        twin = by_key.get((row["method"], "peft"))
        if row["impl"] != "peftedu" or twin is None:
            continue
        row["time_ratio_vs_peft"] = row["time_per_step_s"] / twin["time_per_step_s"]
        if row["peak_memory_mb"] and twin["peak_memory_mb"]:
            row["memory_ratio_vs_peft"] = row["peak_memory_mb"] / twin["peak_memory_mb"]
        row["peft_score"] = twin["score"]


COLUMNS = ["method", "impl", "family", "trainable", "trainable_pct", "peak_memory_mb", "time_per_step_s",
           "tokens_per_s", "latency_unmerged_rel", "latency_merged_rel", "score", "retention", "forgetting",
           "time_ratio_vs_peft", "memory_ratio_vs_peft", "peft_score", "mfu", "loss_first", "loss_last", "lr",
           "steps", "tokens", "eval_rows", "device", "dtype", "model", "weights", "note"]


def _fmt(value, column: str) -> str:
    if value is None or value == "":
        return "–"
    if column == "trainable":
        return f"{value:,}"
    if column == "trainable_pct":
        return f"{value:.4f}%"
    if column in ("score", "retention", "forgetting", "peft_score"):
        return f"{value:+.2f}" if column == "forgetting" else f"{value:.2f}"
    if column in ("time_ratio_vs_peft", "memory_ratio_vs_peft", "latency_unmerged_rel", "latency_merged_rel"):
        return f"{value:.2f}"
    if column == "peak_memory_mb":
        return f"{value:,.0f}"
    if column == "time_per_step_s":
        return f"{value:.3f}"
    if column == "tokens_per_s":
        return f"{value:,.0f}"
    if column == "mfu":
        return f"{100 * value:.1f}%"
    return str(value)


MD_COLUMNS = [("method", "method"), ("trainable", "trainable"), ("trainable_pct", "%"),
              ("peak_memory_mb", "peak train MB"), ("time_per_step_s", "s/step"), ("tokens_per_s", "tokens/s"),
              ("latency_unmerged_rel", "latency unmerged"), ("latency_merged_rel", "latency merged"),
              ("score", "score"), ("forgetting", "forgetting"), ("peft_score", "peft score"),
              ("time_ratio_vs_peft", "time ÷ peft"), ("memory_ratio_vs_peft", "memory ÷ peft"), ("mfu", "MFU")]


def write_results(result: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """CSV (every row, both implementations), Markdown (peftedu rows + ratios), JSON, and three plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    paths = {"csv": out_dir / f"{stem}.csv", "md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in COLUMNS})
    paths["json"].write_text(json.dumps(result, indent=2))

    ours = [r for r in rows if r["impl"] == "peftedu"]
    s, base = result["settings"], result["baseline"]
    lines = [f"# Showdown: {result['model']} on `{s['task']}`, profile `{s['profile']}`, {result['device']}", "",
             f"Produced by `{result['command']}` on {result['date']} ({result['weights']} weights). "
             f"Every method: {ours[0]['steps']} optimizer steps, the same {ours[0]['tokens']:,} training tokens in "
             f"the same order (seed {s['seed']}); "
             + (f"score on the first {base['eval_rows']} test rows. Base model: score {base['score']:.2f}, "
                f"retention {base['retention']:.2f}. Forgetting = base retention minus retention after training. "
                if base["score"] is not None else
                "no scores: random weights were never pretrained, so this table measures cost only. ")
             + "Latency: one forward pass over "
             f"{s['latency_rows']} test prompts, relative to the base model in the same process "
             f"({result.get('torch_threads', '?')} torch thread(s)). "
             "Ratios: peftedu ÷ HF peft (same config, same run), for the methods peft has.", "",
             "| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + " --- |" * len(MD_COLUMNS)]
    for row in ours:
        lines.append("| " + " | ".join(_fmt(row.get(c), c) for c, _ in MD_COLUMNS) + " |")
    serving = result.get("serving")
    if serving:
        lines += ["", f"**Serving {serving['adapters']} LoRA adapters** ({serving['requests']} requests): one mixed "
                  f"batch (each row gathers its own adapter) vs switching adapters request by request — "
                  f"{serving_verdict(serving)}; the mixed batch is "
                  f"{serving['throughput_ratio']:.1f}x the throughput."]
    notes = sorted({(r["method"], r["note"]) for r in ours if r.get("note")})
    if notes:
        lines += ["", "Notes: " + "; ".join(f"{m}: {n}" for m, n in notes) + "."]
    paths["md"].write_text("\n".join(lines) + "\n")

    scored = [r for r in ours if r["score"] is not None]
    if scored:  # (a random-weights run has no scores to plot)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in scored:
            ax.scatter(row["trainable"], row["score"], s=30)
            ax.annotate(row["method"], (row["trainable"], row["score"]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")
        ax.axhline(base["score"], color="grey", ls="--", lw=1, label="base model")
        ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"score on {s['task']}",
               title=f"score against trainable parameters ({result['device']})")
        ax.legend()
        fig.tight_layout()
        paths["plot_score"] = out_dir / f"{stem}_score_vs_params.png"
        fig.savefig(paths["plot_score"], dpi=110)
        plt.close(fig)
    for key, column, label in (("plot_memory", "peak_memory_mb", "peak training memory (MB)"),
                               ("plot_time", "time_per_step_s", "seconds per optimizer step")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        names = [r["method"] for r in ours]
        ax.barh(names, [r[column] or 0 for r in ours], label="peftedu")
        twins = {r["method"]: r for r in rows if r["impl"] == "peft" and r[column]}
        if twins:  # (a category axis cannot place an all-NaN series, so a run without twins draws none)
            ax.scatter([twins[n][column] if n in twins else float("nan") for n in names], names,
                       color="black", marker="|", s=200, label="HF peft", zorder=3)
        ax.set(xlabel=label, title=f"{label} ({result['device']})")
        ax.invert_yaxis()
        ax.legend()
        fig.tight_layout()
        paths[key] = out_dir / f"{stem}_{column.split('_')[0]}.png"
        fig.savefig(paths[key], dpi=110)
        plt.close(fig)
    return paths


def load_log(log: Path | None, settings: Settings) -> list[dict]:
    """The entries of a run log written with the same settings (others are ignored)."""
    if log is None or not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("settings") == settings.__dict__]


def _append_log(log: Path | None, entry: dict, settings: Settings) -> None:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:  # one short line per write: safe for several processes sharing the log
            f.write(json.dumps({**entry, "settings": settings.__dict__}) + "\n")


def showdown(settings: Settings, methods: list[str] | None = None, with_peft: bool = True, isolate: bool = True,
             serving: bool = True, progress: bool = True, log: Path | None = None, run: bool = True) -> dict:
    """Run every method (and its peft twin), return ``{"rows", "baseline", "serving", ...}``.

    ``log``: a JSON Lines file; each finished run is appended to it, and runs it already holds (with the same
    settings) are not repeated. Several processes may share it (e.g. ``--methods`` split in two on two cores);
    a last call with every method then only collects. ``run=False``: collect only, never train.
    """
    from tqdm.auto import tqdm

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
    done = {(e["row"]["method"], e["row"]["impl"]): e["row"] for e in logged if "row" in e}
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
    compare_with_peft(rows)
    first = rows[0]
    return {"rows": rows, "baseline": baseline, "settings": settings.__dict__,
            "serving": serving_benchmark(settings) if serving else None,
            "model": first["model"], "device": first["device"], "weights": first["weights"],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def add_arguments(parser) -> None:
    """The showdown's own options (``--model`` and ``--profile`` are added by the command line, as for tour)."""
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), metavar="METHOD",
                        help=f"a subset of: {', '.join(METHODS)} (default: all)")
    parser.add_argument("--task", default="topic", choices=["topic", "extract"],
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
    parser.add_argument("--random-weights", action="store_true",
                        help="build the model from its shipped config with random weights (no download; no scores)")
    parser.add_argument("--smoke", action="store_true",
                        help="the whole pipeline on a tiny random model: 2 steps, 4 eval rows, one process, "
                             "about 2 minutes (CI)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="train each method for N steps instead of the profile's, e.g. to measure peak memory "
                             "(default: the profile's)")
    parser.add_argument("--throughput", action="store_true",
                        help="instead: time LoRA, HF peft's LoRA and full fine-tuning on packed sequences at a realistic "
                             "length, with MFU (peftedu/throughput.py; random weights of --model, a shipped config; "
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
    from .training import get_profile

    if args.throughput:
        from .throughput import main as throughput_main

        return throughput_main(args)
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
                      serving=not args.no_serving, log=log)
    result["command"] = command.strip()
    device = result["device"]
    stem = "showdown_smoke" if args.smoke else ("showdown_cpu" if device == "cpu" else
                                                 "showdown_gpu_" + device.replace(" ", "_").lower())
    paths = write_results(result, Path(args.out), stem)
    print(Path(paths["md"]).read_text())
    print("wrote", ", ".join(str(p) for p in paths.values()))
