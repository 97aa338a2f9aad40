"""Will it fit? Estimated and measured peak training memory of every method on 1B-class models.

For each method of the showdown, :func:`estimate` adds up what
:func:`peftedu.accounting.estimate_training_memory` counts (weights, gradients, AdamW states) and the
activations of one step without recomputation (34·s·b·h bytes per layer: Korthikanti et al. 2022 with
flash attention, which keeps no score matrix), plus the logits of the loss. :func:`table` sets the estimate beside the peak that a GPU run measured
(``python -m peftedu showdown --profile full --max-steps 4 ...``, committed as ``results/memory_*.json``)
and against the two memory sizes learners have: 16 GB (T4, V100-16GB, RTX 4060 Ti 16GB) and 24 GB
(RTX 3090/4090, A10, L4).
"""

from __future__ import annotations

import json
from pathlib import Path

from .accounting import DecoderShape, estimate_training_memory

GB = 1e9
CARDS_GB = (16, 24)


def shape_of(config, name: str) -> DecoderShape:
    """A :class:`DecoderShape` for any Llama- or Qwen2-style config (biases are too small to matter here)."""
    return DecoderShape(name=name, hidden=config.hidden_size, intermediate=config.intermediate_size,
                        n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads,
                        vocab=config.vocab_size, n_kv_heads=getattr(config, "num_key_value_heads", None),
                        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


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
            est = estimate(row, shape_of(configs[label], label), batch_size=batch_size, seq_len=seq_len)
            # the showdown measures the peak above what was resident before training (weights, adapters)
            measured = ((row["peak_memory_mb"] + row["resident_mb"]) * 1e6 / GB
                        if row.get("peak_memory_mb") is not None and row.get("resident_mb") is not None else None)
            worst = max(est, measured or 0)
            fits = " / ".join("yes" if worst < card * 0.95 else "no" for card in CARDS_GB)  # 5% for the CUDA context
            cells += [f"{est:.1f}", "–" if measured is None else f"{measured:.1f}", fits]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def padded_length(tokenizer, rows, batch_size: int, max_length: int) -> int:
    """The longest tokenized row (capped at ``max_length``): a batch pads to at most this many tokens."""
    from .data import tokenize_example

    return min(max_length, max(len(tokenize_example(tokenizer, r, max_length)["input_ids"]) for r in rows))


__all__ = ["CARDS_GB", "estimate", "padded_length", "shape_of", "table"]
