"""Will it fit? Estimated and measured peak training memory of every method on 1B-class models.

For each method of the showdown, :func:`estimate` adds up what
:func:`peftedu.course.memory.estimate_training_memory` counts (weights, gradients, AdamW states) and the
activations of one step without recomputation (34·s·b·h bytes per layer: Korthikanti et al. 2022 with
flash attention, which keeps no score matrix), plus the logits of the loss. :func:`table` sets the estimate beside the peak that a GPU run measured
(``python -m peftedu showdown --profile full --max-steps 4 ...``, committed as ``results/memory_*.json``)
and against the two memory sizes learners have: 16 GB (T4, V100-16GB, RTX 4060 Ti 16GB) and 24 GB
(RTX 3090/4090, A10, L4).

Without a GPU, :func:`fit_rows` counts every method's parameters on a ``meta``-device copy of the real
architecture (no memory, no weights, about a second) and :func:`fit_table` sets the estimates against both
cards; measured peaks join the table when a GPU run's showdown JSON is given.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ..p_tuning import PromptEncoderConfig
from ..peft_model import get_peft_model
from ..prompt_tuning import PromptTuningConfig
from .memory import estimate_training_memory
from .shapes import DecoderShape, decoder_layers
from .showdown import METHODS
from .tokenization import tokenize_example
from .training import get_profile

GB = 1e9
CARDS_GB = (16, 24)


def estimate(row: dict, shape: DecoderShape, *, batch_size: int, seq_len: int, fp32_inputs: int = 0) -> float:
    """Estimated peak GB of one showdown row (its ``method``, ``trainable`` and ``total`` counts).

    Assumptions, as the showdown trains: a bf16 base; full fine-tuning trains bf16 weights with bf16
    gradients and bf16 AdamW states (torch keeps the states in the weights' dtype); every adapter method
    trains fp32 adapters with fp32 AdamW; QLoRA's block linears are NF4 with double quantization; no
    gradient checkpointing; fp32 logits and their gradient for the loss (8 bytes per logit).
    ``fp32_inputs``: the summed ``in_features`` of one layer's wrapped linears. fp32 adapters on a 16-bit
    base cast each wrapped layer's input to fp32 (peft's ``autocast_adapter_dtype``, and peftedu's LoRA), and
    autograd keeps that copy: 4 bytes per input feature per token per wrapped layer.
    """
    method, trainable, total = row["method"], int(row["trainable"]), int(row["total"])
    # transformers' default attention (SDPA: flash / memory-efficient kernels) keeps no s x s score matrix, so a
    # layer keeps Korthikanti et al.'s 34·s·b·h bytes, without the 5·a·s²·b term of materialised scores
    activations = shape.n_layers * 34 * seq_len * batch_size * shape.hidden / GB
    logits = batch_size * seq_len * shape.vocab * 8 / GB
    activations += shape.n_layers * batch_size * seq_len * fp32_inputs * 4 / GB
    if method == "full":
        kwargs = dict(weight_bits=16, optimizer_state_bits=16)
    elif method == "qlora":
        kwargs = dict(weight_bits="nf4-dq", trainable_bits=32, unquantized_params=total - trainable - shape.linear_params(),
                      trainable_params=trainable)
    else:
        kwargs = dict(weight_bits=16, trainable_bits=32, trainable_params=trainable)
    return estimate_training_memory(total, activations_gb=activations + logits, label=method, **kwargs).total_gb


def measured_gb(row: dict) -> float | None:
    """A GPU showdown row's peak in GB: the showdown measures the peak above what was resident before training
    (weights, adapters), so both are added; ``None`` when the row has no GPU measurement."""
    if row.get("peak_memory_mb") is None or row.get("resident_mb") is None:
        return None
    return (row["peak_memory_mb"] + row["resident_mb"]) * 1e6 / GB


def table(results: dict[str, Path | str], configs: dict, *, batch_size: int, seq_len: int) -> str:
    """Markdown: one row per method, for each model the estimate, the measured peak and whether each card fits.

    ``results``: model label -> a showdown JSON (``rows`` with ``method``, ``trainable``, ``total``,
    ``peak_memory_mb``). ``configs``: model label -> its transformers config.
    """
    data = {label: json.loads(Path(path).read_text()) for label, path in results.items()}
    labels = list(data)
    head = ["method"] + [f"{label} {what}" for label in labels for what in ("estimate GB", "measured GB", "fits 16 / 24 GB")]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    methods = [r["method"] for r in data[labels[0]]["rows"] if r["impl"] == "peftedu"]
    for method in methods:
        cells = [method]
        for label in labels:
            row = next(r for r in data[label]["rows"] if r["method"] == method and r["impl"] == "peftedu")
            est = estimate(row, DecoderShape.from_config(configs[label], label, ignore_biases=True), batch_size=batch_size, seq_len=seq_len)
            measured = measured_gb(row)
            worst = max(est, measured or 0)
            fits = " / ".join("yes" if worst < card * 0.95 else "no" for card in CARDS_GB)  # 5% for the CUDA context
            cells += [f"{est:.1f}", "–" if measured is None else f"{measured:.1f}", fits]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: "yes" leaves this share of the card free: the estimate was 15% under the measured peak of full fine-tuning on
#: an H200 (results/throughput_nvidia_h200.json), and the CUDA context takes a few hundred MB more.
HEADROOM = 0.8


def verdict(gb: float, card_gb: float) -> str:
    """``yes`` under 80% of the card, ``tight`` under 100% (may fit; try a smaller batch), ``no`` above."""
    return "yes" if gb < HEADROOM * card_gb else "tight" if gb < card_gb else "no"


def fp32_input_features(model) -> int:
    """Summed input widths of one decoder layer's wrapped modules that cast their input to fp32 before their
    adapter (LoRA and its variants, AdaLoRA: ``x.to(lora_A.dtype)``; bottleneck adapters: ``h.to(down.dtype)``).
    Autograd keeps each such copy for the backward pass: 4 bytes per feature per token."""
    total = 0
    for module in decoder_layers(model)[0].modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features"):
            total += module.in_features
        elif hasattr(module, "adapter_down"):
            total += next(iter(module.adapter_down.values())).in_features
    return total


def fit_rows(config, methods: list[str] | None = None, *, profile: str = "full") -> list[dict]:
    """Every showdown method on a ``meta``-device copy of ``config``'s architecture (bf16 base): its
    ``trainable`` and ``total`` parameter counts, ``fp32_inputs`` (:func:`fp32_input_features`) and
    ``extra_tokens`` (virtual tokens that lengthen every sequence: prompt tuning, P-tuning).
    The configs are the showdown's own (:data:`peftedu.course.showdown.METHODS`); prompt tuning's text
    initialisation is left out (it changes values, not counts); QLoRA counts as LoRA (the same parameters,
    stored in NF4 by :func:`estimate`)."""
    names = list(METHODS) if methods is None else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; known: {', '.join(METHODS)}.")
    prof, rows = get_profile(profile), []
    for name in names:
        method = METHODS[name]
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        row = {"method": name, "fp32_inputs": 0, "extra_tokens": 0}
        if method.kind == "full":
            row["trainable"] = row["total"] = sum(p.numel() for p in model.parameters())
        else:
            kwargs = method.kwargs(model, types.SimpleNamespace(name_or_path=""), prof)
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("prompt_tuning_init") and k != "tokenizer_name_or_path"}
            wrapped = get_peft_model(model, method.config_class(**kwargs))
            row["trainable"] = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
            row["total"] = sum(p.numel() for p in wrapped.parameters())
            row["fp32_inputs"] = fp32_input_features(model)
            if method.config_class in (PromptTuningConfig, PromptEncoderConfig):
                row["extra_tokens"] = kwargs["num_virtual_tokens"]
        rows.append(row)
    return rows


def fit_table(configs: dict, *, batch_size: int, seq_len: int, measured: dict[str, Path | str] | None = None,
              methods: list[str] | None = None) -> tuple[str, dict]:
    """Markdown: one row per method; for each model (label -> transformers config) its trainable parameters,
    the estimated peak GB, the measured peak GB (from ``measured``: label -> a GPU showdown JSON; "–" without
    one) and the verdict on a 16 GB and a 24 GB card (:func:`verdict`, on the larger of estimate and
    measurement). Also returns ``{label: {method: estimate GB}}``."""
    labels, estimates, columns = list(configs), {}, {}
    for label in labels:
        shape = DecoderShape.from_config(configs[label], label, ignore_biases=True)
        runs = {}
        if measured and label in measured:
            for r in json.loads(Path(measured[label]).read_text())["rows"]:
                if r.get("impl") == "peftedu" and measured_gb(r) is not None:
                    runs[r["method"]] = measured_gb(r)
        columns[label] = {}
        for row in fit_rows(configs[label], methods):
            est = estimate(row, shape, batch_size=batch_size, seq_len=seq_len + row["extra_tokens"],
                           fp32_inputs=row["fp32_inputs"])
            columns[label][row["method"]] = (row["trainable"], est, runs.get(row["method"]))
        estimates[label] = {m: c[1] for m, c in columns[label].items()}
    head = ["method"] + [f"{label} {what}" for label in labels
                         for what in ("trainable", "estimate GB", "measured GB", "16 GB", "24 GB")]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: | ---: | ---: | :---: | :---: |" * len(labels)]
    for method in columns[labels[0]]:
        cells = [method]
        for label in labels:
            trainable, est, got = columns[label][method]
            worst = max(est, got or 0)
            cells += [f"{trainable:,}", f"{est:.1f}", "–" if got is None else f"{got:.1f}",
                      verdict(worst, CARDS_GB[0]), verdict(worst, CARDS_GB[1])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), estimates


def padded_length(tokenizer, rows, batch_size: int, max_length: int) -> int:
    """The longest tokenized row (capped at ``max_length``): a batch pads to at most this many tokens."""
    return min(max_length, max(len(tokenize_example(tokenizer, r, max_length)["input_ids"]) for r in rows))


__all__ = ["CARDS_GB", "HEADROOM", "estimate", "fit_rows", "fit_table", "fp32_input_features", "measured_gb", "padded_length",
           "table", "verdict"]
