"""Named training recipes and the notebooks' memory table: full fine-tuning in fp32, in 16-bit and in mixed
precision, LoRA and QLoRA, each an :func:`~peftedu.course.memory.estimate_training_memory` with its assumptions
stated (:data:`METHODS`), for a model given by its :class:`~peftedu.course.shapes.DecoderShape` or its
parameter count."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterable, Mapping

from .memory import MemoryEstimate, estimate_training_memory
from .shapes import LLAMA_SHAPES, DecoderShape


# --------------------------------------------------------------------------------------------------
# Named methods and the notebook table
# --------------------------------------------------------------------------------------------------

#: Training recipes: what is trained, in which precision, with which optimizer.
METHODS: dict[str, dict[str, Any]] = {
    "full-fp32": dict(
        description="full fine-tuning, everything fp32 + AdamW (source 002's 16 bytes/param)",
        adapter=False, weight_bits=32, optimizer="adamw",
    ),
    "full-16bit": dict(
        description="full fine-tuning, weights, gradients AND AdamW states in 16-bit (source 003 table: 8 bytes/param)",
        adapter=False, weight_bits=16, optimizer="adamw", optimizer_state_bits=16,
    ),
    "full-mixed": dict(
        description="full fine-tuning, bf16/fp16 mixed precision: 16-bit weights + grads, fp32 master + AdamW (16 bytes/param)",
        adapter=False, weight_bits=16, optimizer="adamw", master_weights=True,
    ),
    "lora": dict(
        description="LoRA: frozen bf16 base; fp32 adapters (peft's default upcast) + fp32 AdamW",
        adapter=True, weight_bits=16, trainable_bits=32, optimizer="adamw",
    ),
    "qlora": dict(
        description="QLoRA: frozen NF4 base with double quantization (4.127 bits), bf16 embeddings/norms/lm_head; "
        "bf16 adapters + bf16 grads + paged fp32 AdamW (the QLoRA paper's setup)",
        adapter=True, weight_bits="nf4-dq", trainable_bits=16, optimizer="paged-adamw", quantized=True,
    ),
}


def method_memory(
    method: str,
    n_params: int | float,
    *,
    adapter_params: int | float | None = None,
    quantized_params: int | float | None = None,
    activations_gb: float | None = None,
    label: str | None = None,
) -> MemoryEstimate:
    """:func:`estimate_training_memory` for a named recipe of :data:`METHODS`.

    ``n_params`` is the base model; adapter methods need ``adapter_params`` (added on top).
    ``quantized_params`` (QLoRA): how many base weights are quantized (the linear layers of the
    blocks); the rest stays bf16. ``None`` quantizes all of them -- a slight underestimate.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; known: {list(METHODS)}.")
    spec = dict(METHODS[method])
    description = spec.pop("description")
    adapter = spec.pop("adapter")
    quantized = spec.pop("quantized", False)
    kwargs: dict[str, Any] = dict(spec, activations_gb=activations_gb, label=label or method)
    n_params = int(n_params)
    if adapter:
        if adapter_params is None or adapter_params <= 0:
            raise ValueError(f"Method {method!r} trains adapters: pass adapter_params > 0 (e.g. DecoderShape.lora_params(r)).")
        kwargs["trainable_params"] = int(adapter_params)
        total = n_params + int(adapter_params)
        if quantized and quantized_params is not None:
            if not 0 <= quantized_params <= n_params:
                raise ValueError(f"quantized_params must be between 0 and n_params={n_params:,d}, got {quantized_params}.")
            kwargs["unquantized_params"] = n_params - int(quantized_params)
    else:
        if adapter_params is not None:
            raise ValueError(f"Method {method!r} trains the whole model; adapter_params must be None, got {adapter_params}.")
        total = n_params
    estimate = estimate_training_memory(total, **kwargs)
    return MemoryEstimate(**{**{f.name: getattr(estimate, f.name) for f in fields(estimate)},
                             "assumptions": (f"recipe: {description}",) + estimate.assumptions})


def memory_table(
    models: Mapping[str, DecoderShape | int | float] | None = None,
    methods: Iterable[str] = ("full-fp32", "full-16bit", "full-mixed", "lora", "qlora"),
    *,
    lora_rank: int = 64,
    lora_targets: Iterable[str] | str = "all-linear",
    lora_fraction: float | None = None,
    activations_gb: float | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{"model", "method", "n_params", "trainable_params", "weights_gb", ..., "total_gb"}``.

    ``models`` maps a label to a :class:`DecoderShape` (exact LoRA counts for ``lora_rank`` and
    ``lora_targets``; default: LLaMA 7B/13B/70B) or to a bare parameter count, in which case adapter
    methods need ``lora_fraction`` (adapter params / base params), because a count alone does not
    say how big the adapters are.
    """
    models = dict(models) if models is not None else {k: LLAMA_SHAPES[k] for k in ("7B", "13B", "70B")}
    rows = []
    for model_label, model in models.items():
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"Unknown method {method!r}; known: {list(METHODS)}.")
            adapter = METHODS[method]["adapter"]
            if isinstance(model, DecoderShape):
                n = model.n_params()
                extra = dict(quantized_params=model.linear_params()) if adapter else {}
                adapter_params = model.lora_params(lora_rank, lora_targets) if adapter else None
            elif isinstance(model, (int, float)) and not isinstance(model, bool):
                n, extra = model, {}
                if adapter and lora_fraction is None:
                    raise ValueError(
                        f"Model {model_label!r} is a bare count ({model:,.0f}); method {method!r} needs the adapter "
                        "size: pass lora_fraction=0.01 (say), or a DecoderShape for an exact LoRA count."
                    )
                adapter_params = int(n * lora_fraction) if adapter else None
            else:
                raise ValueError(f"models[{model_label!r}] must be a DecoderShape or a parameter count, got {model!r}.")
            est = method_memory(method, n, adapter_params=adapter_params, activations_gb=activations_gb, **extra)
            rows.append({"model": model_label, **est.as_row(), "description": METHODS[method]["description"]})
    return rows


__all__ = ["METHODS", "memory_table", "method_memory"]
