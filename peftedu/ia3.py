"""(IA)^3 (抑制和放大内部激活, "Infused Adapter by Inhibiting and Amplifying Inner Activations",
Liu et al. 2022, arXiv:2205.05638): learned vectors that rescale activations elementwise.

The paper rescales the attention keys and values and the feed-forward hidden activation::

    softmax(Q (l_k * K)^T / sqrt(d)) (l_v * V)        and        (l_ff * act(x W_1^T)) W_2^T

As in HF peft, a vector ``ia3_l`` sits on a linear layer, on one of two sides:

* an ordinary target (k_proj, v_proj) scales its **output**:   y = (x W^T + b) * l,  ia3_l: (out, 1)
* a feed-forward target (down_proj) scales its **input**:      y = (x * l) W^T + b,  ia3_l: (1, in)

so ``l_ff`` on ``down_proj``'s input is exactly the paper's rescaled hidden activation.
Initialisation: ones (``init_ia3_weights=True``), so the model is unchanged at step 0.
Trainable parameters per layer: ``out`` (ordinary) or ``in`` (feed-forward). Default targets (peft's
tables, chosen from ``model.config.model_type`` when ``target_modules`` is None): Llama k_proj, v_proj,
down_proj (feed-forward: down_proj) -> SmolLM2-135M 30 x (192 + 192 + 1536) = 57,600; BLOOM
query_key_value, mlp.dense_4h_to_h -> bloom-1b4-zh 24 x (6144 + 8192) = 344,064, the tutorial's count.

Merging multiplies the weight, ``W <- W * l`` (columns for feed-forward, rows and the bias otherwise);
unmerging divides by ``l`` again (exact up to rounding; a zero entry cannot be divided, so in that case
the original weight is kept aside instead).
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

from .config import PeftConfig, register_config
from .tuners import (AdapterLayer, Tuner, default_for_architecture, find_target_modules, matches_name,
                     module_device, register_tuner)

# peft's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / ..._FEEDFORWARD_MODULES_MAPPING (model_type -> names)
IA3_TARGET_MODULES = {"llama": ["k_proj", "v_proj", "down_proj"], "mistral": ["k_proj", "v_proj", "down_proj"],
                      "qwen2": ["q_proj", "v_proj", "down_proj"], "bloom": ["query_key_value", "mlp.dense_4h_to_h"]}
IA3_FEEDFORWARD_MODULES = {"llama": ["down_proj"], "mistral": ["down_proj"], "qwen2": ["down_proj"],
                           "bloom": ["mlp.dense_4h_to_h"]}


def default_ia3_targets(model_or_type) -> tuple[list[str], list[str]]:
    """peft's default IA3 ``(target_modules, feedforward_modules)`` for a model (or a ``model_type`` string).

    Llama: k_proj, v_proj, down_proj (feed-forward down_proj); Qwen2: q_proj, v_proj, down_proj (peft's table
    scales the queries there, not the keys); BLOOM: the fused query_key_value and mlp.dense_4h_to_h. An
    architecture without an entry raises, naming the known ones: pass ``target_modules`` yourself then.
    """
    hint = ("pass target_modules=[...] and feedforward_modules=[...] yourself (the key/value projections and the "
            "FFN's down projection).")
    targets = default_for_architecture(IA3_TARGET_MODULES, model_or_type, "IA3 target_modules", hint)
    feedforward = default_for_architecture(IA3_FEEDFORWARD_MODULES, model_or_type, "IA3 feedforward_modules", hint)
    return list(targets), list(feedforward)


@register_config
@dataclasses.dataclass
class IA3Config(PeftConfig):
    """Field names and defaults as peft's ``IA3Config`` (targets chosen per architecture when None)."""

    peft_type = "IA3"
    target_modules: list[str] | str | None = dataclasses.field(default=None, metadata={"help": (
        "The linear layers that get a learned scaling vector (Liu et al. 2022: l_k, l_v on the keys and values, l_ff "
        "in the feed-forward): a list of name suffixes, a regex matching the whole name, or 'all-linear'. Default "
        "None: peft's table per architecture (Llama: k_proj, v_proj, down_proj).")})
    feedforward_modules: list[str] | str | None = dataclasses.field(default=None, metadata={"help": (
        "The targets that are feed-forward layers: their input is scaled (the paper's l_ff) instead of their output. "
        "Names or a regex, a subset of target_modules; default None: peft's table (Llama: down_proj).")})
    modules_to_save: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Names of extra modules (e.g. ['lm_head']) trained in full besides the (IA)^3 vectors, a copy per adapter, "
        "saved in the adapter file. Default None: no such modules.")})
    init_ia3_weights: bool = dataclasses.field(default=True, metadata={"help": (
        "True (default): the vectors l start at ones, so the model is unchanged at step 0 (the paper's init). False: "
        "random N(0, 1) entries (peft's option, for tests).")})

    def __post_init__(self):
        super().__post_init__()
        for field in ("target_modules", "feedforward_modules"):
            value = getattr(self, field)
            if isinstance(value, (set, tuple)):
                value = sorted(value)
                setattr(self, field, value)
            if value is not None and not isinstance(value, (str, list)):
                raise ValueError(f"{field} must be None, a list of names or a regex string; got {value!r}.")
        if isinstance(self.target_modules, list) and isinstance(self.feedforward_modules, list) \
                and not set(self.feedforward_modules) <= set(self.target_modules):
            raise ValueError(f"feedforward_modules {sorted(set(self.feedforward_modules) - set(self.target_modules))} "
                             "are not in target_modules: a feed-forward module must also be a target.")


def is_feedforward(name: str, feedforward_modules) -> bool:
    if isinstance(feedforward_modules, str):
        return re.fullmatch(feedforward_modules, name) is not None
    return any(matches_name(name, f) for f in feedforward_modules or [])


class IA3Linear(AdapterLayer):
    """A linear layer whose input (feed-forward) or output (otherwise) is scaled by ``ia3_l[adapter]``."""

    adapter_attributes = ("ia3_l",)

    def __init__(self, base_layer: nn.Module, feedforward: bool):
        super().__init__(base_layer)
        self.is_feedforward = feedforward
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.ia3_l = nn.ParameterDict()
        self._undo: list = []

    def add(self, adapter_name: str, config: IA3Config) -> None:
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        device = module_device(self.base_layer)
        vector = torch.ones(shape, device=device) if config.init_ia3_weights else torch.randn(shape).to(device)
        self.ia3_l[adapter_name] = nn.Parameter(vector)

    def _scaling(self, names) -> torch.Tensor | None:
        """The product of the named adapters' vectors, flattened to (in,) or (out,); None if none applies."""
        scaling = None
        for name in names:
            if name in self.ia3_l:
                vector = self.ia3_l[name].flatten()
                scaling = vector if scaling is None else scaling * vector
        return scaling

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled and self.merged:
            self.unmerge()
        if self.disabled or self.merged:
            return self.base_layer(x, *args, **kwargs)
        if self.row_adapters is not None:  # mixed batch: one scaling vector per row
            size = self.in_features if self.is_feedforward else self.out_features
            ones = torch.ones(size, device=x.device)
            rows = [self._scaling([n]) for n in self.row_adapters]
            scaling = torch.stack([ones if r is None else r for r in rows])  # (batch, size)
            scaling = scaling.view(scaling.shape[0], *[1] * (x.dim() - 2), size)
        else:
            scaling = self._scaling(self.active_adapters)
            if scaling is None:
                return self.base_layer(x, *args, **kwargs)
        if self.is_feedforward:
            return self.base_layer((x * scaling).to(x.dtype), *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scaling).to(result.dtype)

    # ----------------------------------------------------------------- merging: W * l, undone by W / l
    def merge(self, adapter_names: list[str]) -> None:
        for name in adapter_names:
            if name not in self.ia3_l:
                continue
            vector = self.ia3_l[name].detach()
            weight, bias = self._weight(), self.base_layer.bias
            self._undo.append((weight.clone(), None if bias is None else bias.detach().clone())
                              if (vector == 0).any() else None)
            self._set(weight * vector.to(weight.dtype),
                      None if bias is None or self.is_feedforward else bias * vector.flatten().to(bias.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name, saved = self.merged_adapters.pop(), self._undo.pop()
            if saved is not None:
                self._set(*saved)
                continue
            vector, weight, bias = self.ia3_l[name].detach(), self._weight(), self.base_layer.bias
            self._set(weight / vector.to(weight.dtype),
                      None if bias is None or self.is_feedforward else bias / vector.flatten().to(bias.dtype))

    def _weight(self) -> torch.Tensor:
        base = self.base_layer
        return base.dequantize() if hasattr(base, "dequantize") else base.weight.detach()

    def _set(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        with torch.no_grad():
            if hasattr(self.base_layer, "requantize"):  # 4-bit base: back to 4 bits (lossy)
                self.base_layer.requantize(weight)
            else:
                self.base_layer.weight.copy_(weight)
            if bias is not None:
                self.base_layer.bias.copy_(bias)


@register_tuner
class IA3Tuner(Tuner):
    peft_type = "IA3"

    layer_class = IA3Linear

    def target_names(self, model: nn.Module, config: IA3Config) -> list[str]:
        """The targets, defaults filled per architecture; every feedforward entry must be among them."""
        if config.target_modules is None:
            config.target_modules = list(default_for_architecture(
                IA3_TARGET_MODULES, model, "IA3 target_modules", "pass target_modules=[...] yourself."))
        if config.feedforward_modules is None:
            config.feedforward_modules = list(default_for_architecture(
                IA3_FEEDFORWARD_MODULES, model, "IA3 feedforward_modules",
                "pass feedforward_modules=[...] (a subset of target_modules, e.g. ['down_proj'])."))
        names = find_target_modules(model, config.target_modules)
        ff = config.feedforward_modules
        entries = [ff] if isinstance(ff, str) else [[f] for f in ff]  # a regex, or one-name lists
        unused = [e for e in entries if not any(is_feedforward(n, e) for n in names)]
        if unused:
            raise ValueError(f"feedforward_modules entries {unused} match none of the targeted layers "
                             f"(e.g. {names[:3]}); a feed-forward module must be one of the targets.")
        return names

    def create_layer(self, module: nn.Module, name: str, config: IA3Config) -> IA3Linear:
        return IA3Linear(module, is_feedforward(name, config.feedforward_modules))

    def check_layer(self, layer: IA3Linear, name: str, config: IA3Config) -> None:
        if layer.is_feedforward != is_feedforward(name, config.feedforward_modules):
            raise ValueError(f"{name} is {'' if layer.is_feedforward else 'not '}a feed-forward module for the "
                             "existing adapters; every adapter must scale the same side of a layer.")
