"""Combining LoRA adapters into a new one (合并适配器), as peft's ``add_weighted_adapter``.

Given adapters ``i`` with factors ``A_i`` (r_i x in), ``B_i`` (out x r_i), scalings ``s_i`` and user
weights ``w_i``, the goal on every layer is the weighted update ``delta W = sum_i w_i s_i B_i A_i``.
The new adapter has scaling 1 (its factors carry every scale), rank r':

* ``"cat"`` (exact, r' = sum r_i): stack the factors, ``A' = [w_1 s_1 A_1; w_2 s_2 A_2; ...]``
  (rows), ``B' = [B_1, B_2, ...]`` (columns), so ``B' A' = sum_i w_i s_i B_i A_i`` exactly.
* ``"svd"`` (r' = ``svd_rank``, default max r_i): form ``delta W``, take its SVD ``U S V^T`` and keep
  the top r' singular values: ``B' = U_r' S_r'``, ``A' = V_r'^T``. Exact when r' >= rank(delta W)
  (always when r' >= sum r_i); otherwise the best rank-r' approximation (Eckart-Young).
* ``"linear"`` (r' = r, all ranks must be equal): ``A' = sum_i sign_i sqrt|w_i s_i| A_i``,
  ``B' = sum_i sqrt|w_i s_i| B_i``. NOT exact: ``B' A'`` contains cross terms
  ``sqrt|w_i s_i w_j s_j| B_i A_j`` (i != j); with one adapter it is exact.

With one adapter peft uses "linear" whatever is asked (all three are exact then); so do we.
The new adapter's config copies the first adapter's, with ``r = r'`` and an alpha that gives scaling 1:
``lora_alpha = r'`` for LoRA, ``lora_alpha = sqrt(r')`` for rsLoRA (``alpha / sqrt(r)``). peft sets
``lora_alpha = r'`` in both cases, so its combination of rsLoRA adapters is ``sqrt(r')`` times too large.
DoRA adapters (their magnitudes cannot be combined) and adapters with ``modules_to_save`` are refused.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .config import check_number

COMBINATION_TYPES = ("svd", "linear", "cat")


def add_weighted_adapter(peft_model, adapters: list[str], weights: list[float], adapter_name: str,
                         combination_type: str = "svd", svd_rank: int | None = None) -> None:
    """Add adapter ``adapter_name`` = the weighted combination of LoRA ``adapters`` (see the module docstring).

    The active adapter stays as it was; call ``peft_model.set_adapter(adapter_name)`` to use the new one.
    """
    configs = _check(peft_model, adapters, weights, adapter_name, combination_type, svd_rank)
    if len(adapters) == 1:
        combination_type = "linear"
    ranks = [config.r for config in configs]
    new_rank = {"linear": ranks[0], "cat": sum(ranks), "svd": svd_rank or max(ranks)}[combination_type]
    first = configs[0]
    new_config = dataclasses.replace(first, r=new_rank, target_modules=_union_targets(peft_model, adapters, configs),
                                     lora_alpha=math.sqrt(new_rank) if first.use_rslora else new_rank)
    active = peft_model.active_adapter
    peft_model.add_adapter(adapter_name, new_config)
    try:
        for layer in peft_model.tuner.layers(peft_model.base_model):
            if adapter_name not in getattr(layer, "lora_A", {}):
                continue
            present = [(name, weight) for name, weight in zip(adapters, weights) if name in layer.lora_A]
            new_A, new_B = _COMBINE[combination_type](layer, present, new_rank)
            with torch.no_grad():
                layer.lora_A[adapter_name].weight.copy_(new_A)
                layer.lora_B[adapter_name].weight.copy_(new_B)
    except Exception:
        peft_model.delete_adapter(adapter_name)
        raise
    finally:
        peft_model.set_adapter(active)


def _combine_cat(layer, present, new_rank):
    A = torch.cat([layer.lora_A[n].weight * w * layer.scaling[n] for n, w in present], dim=0)
    B = torch.cat([layer.lora_B[n].weight for n, _ in present], dim=1)
    pad = new_rank - A.shape[0]  # adapters that skip this layer leave zero rows/columns
    return torch.nn.functional.pad(A, (0, 0, 0, pad)), torch.nn.functional.pad(B, (0, pad))


def _combine_linear(layer, present, new_rank):
    A = sum(math.copysign(math.sqrt(abs(w * layer.scaling[n])), w * layer.scaling[n]) * layer.lora_A[n].weight
            for n, w in present)
    B = sum(math.sqrt(abs(w * layer.scaling[n])) * layer.lora_B[n].weight for n, w in present)
    return A, B


def _combine_svd(layer, present, new_rank):
    delta = sum(w * layer.delta_weight(n) for n, w in present)  # delta_weight includes s_i
    if new_rank > min(delta.shape):
        raise ValueError(f"svd_rank={new_rank} exceeds min(out, in) = {min(delta.shape)} of a targeted layer; "
                         f"use svd_rank <= {min(delta.shape)}.")
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[:new_rank], U[:, :new_rank] * S[:new_rank]


_COMBINE = {"cat": _combine_cat, "linear": _combine_linear, "svd": _combine_svd}


def _check(peft_model, adapters, weights, adapter_name, combination_type, svd_rank):
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"combination_type={combination_type!r} is not supported; use one of {COMBINATION_TYPES}.")
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"adapters and weights must be non-empty lists of equal length; got {len(adapters)} "
                         f"adapters and {len(weights)} weights.")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters lists a name twice: {adapters}; give each adapter once with its weight.")
    if adapter_name in peft_model.peft_config:
        raise ValueError(f"An adapter named {adapter_name!r} exists already; pick another name.")
    for name in adapters:
        peft_model._check_known(name)
    configs = [peft_model.peft_config[name] for name in adapters]
    if any(config.peft_type != "LORA" for config in configs):
        raise ValueError("add_weighted_adapter combines LoRA adapters only; got "
                         f"{sorted({c.peft_type for c in configs})}.")
    if any(config.use_dora for config in configs):
        raise ValueError("DoRA adapters cannot be combined: their magnitude vectors m have no weighted sum that "
                         "keeps W' = m (W + sBA)/||W + sBA||. Merge them one at a time instead.")
    if any(config.modules_to_save for config in configs):
        raise ValueError("Adapters with modules_to_save cannot be combined: the full copies of those modules "
                         "have no low-rank factors to weight. Combine adapters without modules_to_save.")
    if len({config.use_rslora for config in configs}) > 1:
        raise ValueError("Mixing rsLoRA and plain LoRA adapters is not supported: the new adapter's scaling rule "
                         "(alpha / sqrt(r) or alpha / r) would be ambiguous.")
    ranks = [config.r for config in configs]
    if combination_type == "linear" and len(adapters) > 1 and len(set(ranks)) != 1:
        raise ValueError(f"combination_type='linear' needs adapters of equal rank, got r = {ranks}; "
                         "use 'cat' (exact) or 'svd'.")
    if svd_rank is not None:
        if combination_type != "svd" or len(adapters) == 1:
            raise ValueError("svd_rank is used by combination_type='svd' with two or more adapters only.")
        check_number("svd_rank", svd_rank, integer=True)
    return configs


def _union_targets(peft_model, adapters, configs):
    """target_modules of the new adapter: the union of the adapters' (list union or regex alternation, as
    peft); otherwise (e.g. 'all-linear' or mixed kinds) the full names of the layers holding any of them."""
    targets = [config.target_modules for config in configs]
    if all(isinstance(t, list) for t in targets):
        return sorted(set().union(*targets))
    if all(isinstance(t, str) and t != "all-linear" for t in targets):
        return "|".join(f"({t})" for t in targets)
    return [name for name, layer in peft_model.base_model.named_modules()
            if any(a in getattr(layer, "lora_A", {}) for a in adapters)]
