"""DoRA (权重分解低秩适配, Weight-Decomposed Low-Rank Adaptation; Liu et al. 2024, arXiv:2402.09353).

DoRA splits each weight into a *magnitude* (one length per output row) and a *direction*, and lets
LoRA change only the direction while a new vector ``m`` learns the magnitude::

    W' = m * (W + s B A) / ||W + s B A||_c          m: (out,),  W: out x in,  A: r x in,  B: out x r

``||.||_c`` is the norm of each output row (peft's ``torch.linalg.norm(W, dim=1)``: the paper's
"column-wise" norm of ``W^T``), ``s`` the LoRA scaling (``alpha / r`` or rsLoRA's ``alpha / sqrt(r)``).

Initialisation: ``m = ||W + s B A||_c``, which is ``||W||_c`` because B = 0, so ``W' = W`` at step 0.
Trainable parameters per layer: LoRA's ``r * (in + out)`` plus ``out`` for ``m``.

Forward pass, as peft computes it (no new weight matrix is formed)::

    g      = m / ||W + s B A||_c            shape (out,), the norm DETACHED (paper section 4.3:
                                            treated as a constant, so it gets no gradient)
    y      = x W^T + b + (g - 1) * (x W^T) + g * s * (x A^T B^T)
           = g * (x W^T + s x A^T B^T) + b  (the bias b is not rescaled)

This module returns the part added to the base output ``x W^T + b``: ``(g - 1) * (x W^T) + g * s * x A^T B^T``.
With LoRA dropout active (training, ``lora_dropout > 0``) peft feeds the *dropped-out* input to both
terms, so ``x W^T`` is recomputed from it instead of reusing the base output; so do we.
Merging writes ``W <- g[:, None] * (W + s B A)`` into the base layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoraMagnitude(nn.Module):
    """The magnitude vector ``m`` (one ``weight`` of shape (out,)) of one adapter on one layer.

    Live name ``<layer>.lora_magnitude_vector.<adapter>.weight``; peft's files (and ours) store it as
    ``<layer>.lora_magnitude_vector``, without ``.weight`` (see ``LoraTuner.named_adapter_tensors``)."""

    def __init__(self, magnitude: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(magnitude)

    @classmethod
    def from_layer(cls, layer, adapter_name: str) -> "DoraMagnitude":
        """``m = ||W + s B A||_c`` from a :class:`~peftedu.lora.LoraLinear` whose LoRA tensors exist already."""
        lora_A = layer.lora_A[adapter_name].weight
        if lora_A.device.type == "meta":  # counting on a meta model: only the shape matters
            return cls(torch.empty(layer.out_features, device="meta", dtype=lora_A.dtype))
        with torch.no_grad():
            norm = weight_norm(layer, adapter_name)
        return cls(norm)

    def forward(self, layer, adapter_name: str, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """What DoRA adds to ``base_out`` (= ``x W^T + b`` before dropout); ``x`` is after LoRA dropout."""
        lora_A, lora_B = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        scaling = layer.scaling[adapter_name]
        weight = layer.base_weight().to(x.dtype)
        norm = weight_norm(layer, adapter_name, weight).detach()  # section 4.3: a constant
        gain = (self.weight / norm).view(1, -1)  # g, broadcast over the last (output) dimension
        lora_out = lora_B(lora_A(x))
        dropout = layer.lora_dropout[adapter_name]
        if isinstance(dropout, nn.Identity) or not layer.training:
            bias = getattr(layer.base_layer, "bias", None)
            base = base_out if bias is None else base_out - bias  # x W^T: the bias is not rescaled
        else:  # dropout changed x, so x W^T must be recomputed from the dropped-out input (as peft)
            base = F.linear(x, weight)
        return (gain - 1) * base + gain * lora_out * scaling

    def merged_weight(self, layer, adapter_name: str) -> torch.Tensor:
        """``g[:, None] * (W + s B A)``: the weight that gives the same outputs without the adapter."""
        base_weight = layer.base_weight()
        weight = base_weight.to(self.weight.dtype)  # computed in the adapter's precision (fp32), as peft
        delta = layer.delta_weight(adapter_name).detach().to(weight.dtype)
        gain = self.weight.detach() / torch.linalg.norm(weight + delta, dim=1)
        return (gain.view(-1, 1) * (weight + delta)).to(base_weight.dtype)


def weight_norm(layer, adapter_name: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``||W + s B A||_c``: the L2 norm of each output row, shape (out,), in the adapter's precision.

    B A enters without gradient (as peft); the caller detaches the result in the forward pass."""
    lora_A, lora_B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    weight = (layer.base_weight() if weight is None else weight).to(lora_A.dtype)
    lora_weight = (lora_B @ lora_A).detach()
    return torch.linalg.norm(weight + layer.scaling[adapter_name] * lora_weight, dim=1)
