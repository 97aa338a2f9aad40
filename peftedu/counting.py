"""Counting parameters the way HF peft does: how many train, how many there are.

:func:`count_parameters` / :func:`print_trainable_parameters` print the numbers HF peft prints
(``trainable params: 1,234 || all params: 5,678 || trainable%: 0.0217``), computed the same way, so a
learner can compare our from-scratch models with peft's line for line. 4-bit packed weights count as the
parameters they encode (peft's rule for bitsandbytes ``Params4bit``).
"""

from __future__ import annotations

import torch
from torch import nn


def _logical_buffer_params(model: nn.Module) -> int:
    """Weights stored outside ``parameters()``: the sum of ``module.numel_logical`` over modules.

    The hook: a module that keeps a frozen weight in buffers rather than a Parameter (our
    ``peftedu.quant.Linear4bit`` packs two 4-bit codes per ``uint8`` in ``weight_packed``) exposes
    ``numel_logical`` = how many weight values those buffers encode (``out_features * in_features``).
    They count as frozen parameters; ordinary buffers (rotary caches, masks) are never counted.
    Each module is visited once (``named_modules`` de-duplicates shared modules).
    """
    total = 0
    for name, module in model.named_modules():
        n = getattr(module, "numel_logical", None)
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(
                f"{name or 'model'}.numel_logical must be a non-negative int (the weight values its buffers "
                f"encode), got {n!r}."
            )
        total += n
    return total


def logical_numel(tensor: torch.Tensor) -> int:
    """How many model parameters a stored tensor holds.

    * plain tensors: ``numel()`` (works on the meta device: shapes need no storage);
    * DeepSpeed ZeRO-3 shards report ``numel() == 0`` and keep the real count in ``ds_numel``;
    * bitsandbytes ``Params4bit`` packs two 4-bit values per byte of its storage dtype, so one stored
      element of ``element_size()`` bytes holds ``2 * element_size()`` parameters -- exactly the rule
      of ``peft.PeftModel.get_nb_trainable_parameters`` (uint8 storage: ``numel * 2``). One deliberate
      difference: a ``Params4bit`` not yet quantized (``bnb_quantized`` False: bitsandbytes quantizes
      when the layer moves to a device) still holds the full matrix, so it counts ``numel`` here,
      where peft would report twice the truth.
    """
    n = tensor.numel()
    if n == 0 and hasattr(tensor, "ds_numel"):
        n = tensor.ds_numel
    if tensor.__class__.__name__ == "Params4bit" and getattr(tensor, "bnb_quantized", True):
        if hasattr(tensor, "element_size"):
            num_bytes = tensor.element_size()
        elif not hasattr(tensor, "quant_storage"):
            num_bytes = 1
        else:
            num_bytes = tensor.quant_storage.itemsize
        return n * 2 * num_bytes
    return int(n)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``model``, the way HF peft counts them.

    * Shared/tied tensors count once: ``model.named_parameters()`` de-duplicates by identity
      (SmolLM2 ties ``lm_head.weight`` to ``embed_tokens.weight``: 134,515,008 params, not 162,826,560).
    * Meta-device models work (only shapes are read).
    * 4-bit packed weights count as the parameters they encode: bitsandbytes ``Params4bit`` (see
      :func:`logical_numel`) and modules exposing ``numel_logical`` (weights kept in buffers, like
      ``peftedu.quant.Linear4bit``), which count as frozen.
    * ``trainable`` = parameters with ``requires_grad``.

    For a ``peft.PeftModel`` this equals ``peft_model.get_nb_trainable_parameters()``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"count_parameters expects a torch.nn.Module, got {type(model).__name__}.")
    trainable = total = 0
    for _, param in model.named_parameters():
        n = logical_numel(param)
        total += n
        if param.requires_grad:
            trainable += n
    total += _logical_buffer_params(model)
    return trainable, total


def format_trainable_parameters(model_or_counts: nn.Module | tuple[int, int]) -> str:
    """The line HF peft prints, for a model or a ``(trainable, total)`` pair."""
    trainable, total = (
        count_parameters(model_or_counts) if isinstance(model_or_counts, nn.Module) else model_or_counts
    )
    if total <= 0:
        raise ValueError(f"The model has no parameters (total = {total}); nothing to report.")
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def print_trainable_parameters(model: nn.Module) -> None:
    """Print ``trainable params: 1,234 || all params: 5,678 || trainable%: 21.7322`` (peft's format)."""
    print(format_trainable_parameters(model))


__all__ = ["count_parameters", "format_trainable_parameters", "logical_numel", "print_trainable_parameters"]
