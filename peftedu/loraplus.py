"""LoRA+ (Hayou, Ghosh & Yu 2024, arXiv:2402.12354): a larger learning rate for B than for A.

LoRA+ changes no module, only the optimizer. With one learning rate for both factors of
``delta W = s B A``, B (which starts at 0) learns too slowly when the model is wide; the paper's
analysis gives ``eta_B = lambda * eta_A`` with ``lambda >> 1`` (it suggests about 16)::

    group A          every other trainable tensor (lora_A, modules_to_save copies ...)   lr = eta_A
    group embedding  tensors of LoRA layers on an nn.Embedding                           lr = loraplus_lr_embedding
    group B          lora_B and every 1-D tensor (biases, norms, DoRA's magnitude m)     lr = eta_A * loraplus_lr_ratio
    group B_no_decay the part of group B that is a bias or inside a LayerNorm            lr = eta_A * loraplus_lr_ratio

The groups, their order, learning rates and weight decays are those of
``peft.optimizers.create_loraplus_optimizer``. One difference in spelling: peft reads the groups'
weight decay from ``loraplus_weight_decay`` (a plain ``weight_decay=`` keyword there is overridden by
every group and so has no effect); here it is ``weight_decay`` (``loraplus_weight_decay`` is accepted too).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import check_number
from .tuners import AdapterLayer


def loraplus_param_groups(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """Sort the trainable parameters of ``model`` into LoRA+'s four groups: ``{group: {name: param}}``."""
    decay = _decay_parameter_names(model)
    groups: dict[str, dict[str, nn.Parameter]] = {"groupA": {}, "embedding": {}, "groupB": {}, "groupB_no_decay": {}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # adapter tensors live in a ModuleDict below their layer: ``<layer>.lora_A.default.weight``
        owner_name = ".".join(name.split(".")[:-2])
        owner = model.get_submodule(owner_name) if owner_name else None
        if isinstance(owner, AdapterLayer) and isinstance(owner.base_layer, nn.Embedding):
            groups["embedding"][name] = param
        elif "lora_B" in name or param.ndim == 1:
            groups["groupB" if name in decay else "groupB_no_decay"][name] = param
        else:
            groups["groupA"][name] = param
    return groups


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: type[torch.optim.Optimizer], lr: float,
                              loraplus_lr_ratio: float, loraplus_lr_embedding: float = 1e-6,
                              weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
    """An ``optimizer_cls`` (e.g. ``torch.optim.AdamW``) with LoRA+'s groups; ``kwargs`` go to the optimizer."""
    if "loraplus_weight_decay" in kwargs:  # peft's name for the same setting
        if weight_decay != 0.0:
            raise ValueError("Pass weight_decay or peft's name for it, loraplus_weight_decay, not both.")
        weight_decay = kwargs.pop("loraplus_weight_decay")
    for name, value in (("lr", lr), ("loraplus_lr_ratio", loraplus_lr_ratio),
                        ("loraplus_lr_embedding", loraplus_lr_embedding)):
        check_number(name, value)
    check_number("weight_decay", weight_decay, at_least=0)
    groups = loraplus_param_groups(model)
    if not groups["groupA"] and not groups["groupB"] and not groups["groupB_no_decay"] and not groups["embedding"]:
        raise ValueError("The model has no parameter with requires_grad=True: nothing to optimize.")
    if not any("lora_B" in name for group in groups.values() for name in group):
        raise ValueError("LoRA+ needs trainable LoRA adapters (tensors named lora_B); this model has none. "
                         "Wrap it with get_peft_model(model, LoraConfig(...)) first, or use a plain optimizer.")
    param_groups = [
        {"params": list(groups["groupA"].values()), "weight_decay": weight_decay, "lr": lr},
        {"params": list(groups["embedding"].values()), "weight_decay": weight_decay, "lr": loraplus_lr_embedding},
        {"params": list(groups["groupB"].values()), "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio},
        {"params": list(groups["groupB_no_decay"].values()), "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ]
    return optimizer_cls(param_groups, lr=lr, **kwargs)


def _decay_parameter_names(model: nn.Module) -> set[str]:
    """Names that get weight decay (transformers' rule): not a bias and not inside an nn.LayerNorm."""
    in_layernorm = {f"{module_name}.{param_name}".lstrip(".")
                    for module_name, module in model.named_modules() if isinstance(module, nn.LayerNorm)
                    for param_name, _ in module.named_parameters()}
    return {name for name, _ in model.named_parameters() if name not in in_layernorm and "bias" not in name}
