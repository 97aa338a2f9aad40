"""BitFit (偏置微调, Ben Zaken et al. 2021, arXiv:2106.10199): train the bias terms only.

Every linear layer and LayerNorm ends by adding a bias vector; BitFit freezes everything else::

    y = x W^T + b                    linear:     W (out x in) frozen,  b (out,) trained
    y = g * (x - mean) / std + b     LayerNorm:  g (d,) frozen,        b (d,) trained

Trainable parameters = the number of bias entries: on bloom-1b4-zh (biases in every linear layer and
LayerNorm) 544,768 of 1,303,111,680, the count the source tutorial prints.

**Models without biases.** Llama-family models (SmolLM2, TinyLlama; Qwen2 has biases only on q/k/v)
have no biases, so plain BitFit would train nothing. With ``add_missing_biases=True`` (the default)
every targeted layer without a bias gets a new one, initialised to zero, so the model is unchanged at
step 0. The default targets are every module that has a bias plus every linear layer except the output
head (``lm_head``: its bias would only shift the logits of each token, and on tied models it shares
its weight with the embeddings). RMSNorm layers get none: a norm bias ``beta`` feeding a linear
layer ``W`` is the same as the linear bias ``W beta``, so the linear biases already cover it.
SmolLM2-135M: 30 layers x (576 + 192 + 192 + 576 + 1536 + 1536 + 576) = 155,520 new biases.

**Bookkeeping.** Each adapter owns a full bias vector ``bitfit_bias[name]`` (a copy of the layer's
bias, or zeros), which the layer uses instead of its own. The layer's original bias becomes a frozen
*buffer* (not a parameter), so the counts equal training the biases in place, as the paper does, while
``disable_adapter()`` and a second adapter still see the original. Merging writes the adapter's bias
into the layer; ``merge_and_unload()`` returns a plain model whose layers own the learned biases.
HF peft has no BitFit (its BEFT, arXiv:2509.15974, adds zero-initialised bias deltas to layers that
have a bias), so this format is peftedu's own: ``peft_type`` "BITFIT", tensors saved as
``base_model.model.<layer>.bitfit_bias``.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from .config import PeftConfig, register_config
from .tuners import (AdapterLayer, Tuner, candidate_layers, find_target_modules, linear_types, module_device,
                     module_dtype, register_tuner)


def linear_like_types() -> tuple[type, ...]:
    """Linear layers (incl. 4-bit ones) and transformers' Conv1D (GPT-2's linear layer)."""
    return linear_types() + (Conv1D,)


def bias_types() -> tuple[type, ...]:
    """Layers whose output ends with ``+ b`` along the last dimension: linear layers and LayerNorm."""
    return linear_like_types() + (nn.LayerNorm,)


@register_config
@dataclasses.dataclass
class BitFitConfig(PeftConfig):
    """``target_modules=None``: every module with a bias (+ every linear layer but the head when
    ``add_missing_biases``). A list of name suffixes, a regex or "all-linear" picks layers instead."""

    peft_type = "BITFIT"
    target_modules: list[str] | str | None = dataclasses.field(default=None, metadata={"help": (
        "The layers whose biases are trained (Ben Zaken et al. 2021 train all of them): a list of name suffixes, a "
        "regex matching the whole name, or 'all-linear'. Default None: every module with a bias, plus every linear "
        "layer but the head when add_missing_biases.")})
    add_missing_biases: bool = dataclasses.field(default=True, metadata={"help": (
        "True (default): targeted linear layers without a bias (all of Llama's) get a new zero-initialised one, so "
        "BitFit has something to train. False: only biases the model already has are trained, as in the paper.")})
    modules_to_save: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Names of extra modules (e.g. ['lm_head']) trained in full besides the biases, a copy per adapter, saved in "
        "the adapter file. Default None: no such modules.")})

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.add_missing_biases, bool):
            raise ValueError(f"add_missing_biases must be True or False, got {self.add_missing_biases!r}.")
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.target_modules is not None and not isinstance(self.target_modules, (str, list)):
            raise ValueError("target_modules must be None (every bias), a list of names, a regex or 'all-linear'; "
                             f"got {self.target_modules!r}.")


def _bias_shape(layer: nn.Module) -> tuple[int, ...]:
    if getattr(layer, "bias", None) is not None:
        return tuple(layer.bias.shape)
    if isinstance(layer, nn.LayerNorm):
        return tuple(layer.normalized_shape)
    if hasattr(layer, "out_features"):
        return (layer.out_features,)
    return (layer.nf,)  # transformers' Conv1D


class BitFitLayer(AdapterLayer):
    """A layer whose bias is replaced by the active adapter's ``bitfit_bias`` (shape = the output's last dim)."""

    adapter_attributes = ("bitfit_bias",)

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        own_bias = base_layer.bias
        self.had_bias = own_bias is not None
        self.bias_shape = _bias_shape(base_layer)
        del base_layer.bias  # the parameter becomes a frozen buffer: the adapters' copies are what trains
        base_layer.register_buffer("bias", None if own_bias is None else own_bias.detach())
        self.bitfit_bias = nn.ParameterDict()

    def add(self, adapter_name: str, config: BitFitConfig | None = None) -> None:
        """Start from the layer's own bias (so the model is unchanged), or from zeros where it has none.
        Kept in float32 on a bf16/fp16 base (as peft does with adapter tensors): small updates survive.
        ``config`` is what every method's ``add`` receives; a bias needs no per-adapter setting from it."""
        own = self.base_layer.bias if not self.merged else self._unmerged_bias
        dtype = torch.float64 if module_dtype(self.base_layer) == torch.float64 else torch.float32
        if own is not None:
            start = own.detach().to(dtype).clone()
        else:
            start = torch.zeros(self.bias_shape, device=module_device(self.base_layer), dtype=dtype)
        self.bitfit_bias[adapter_name] = nn.Parameter(start)

    def _shift(self, adapter_name: str) -> torch.Tensor:
        """b_adapter - b_original: what the adapter adds to the base output (exactly 0 at step 0)."""
        own = self.base_layer.bias
        if adapter_name not in self.bitfit_bias:  # "__base__" rows of a mixed batch
            return torch.zeros(self.bias_shape, device=module_device(self.base_layer))
        bias = self.bitfit_bias[adapter_name]
        return bias if own is None else bias - own

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)  # includes the original (or merged) bias
        if self.disabled or self.merged:
            return result
        if self.row_adapters is not None:  # mixed batch: row i gets adapter row_adapters[i]
            shift = torch.stack([self._shift(name) for name in self.row_adapters])  # (batch, *bias_shape)
            extra = [1] * (result.dim() - shift.dim())
            return result + shift.view(shift.shape[0], *extra, *shift.shape[1:]).to(result.dtype)
        for name in self.active_adapters:
            result = result + self._shift(name).to(result.dtype)
        return result

    # ----------------------------------------------------------------- merging: the bias is simply replaced
    def merge(self, adapter_names: list[str]) -> None:
        names = [name for name in adapter_names if name in self.bitfit_bias]
        if not names or self.merged:
            return
        merged = self.bitfit_bias[names[0]].detach().clone()
        for name in names[1:]:
            merged = merged + self._shift(name).detach()
        self._unmerged_bias = self.base_layer.bias
        self.base_layer.bias = merged.to(module_dtype(self.base_layer))
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.bias = self._unmerged_bias
            self.merged_adapters.clear()

    def unwrap(self) -> nn.Module:
        """The base layer with its bias a parameter again: the learned one if merged, else the original."""
        layer, bias = self.base_layer, self.base_layer.bias
        del layer.bias
        layer.register_parameter("bias", None if bias is None else nn.Parameter(bias, requires_grad=False))
        return layer


def bitfit_target_names(model: nn.Module, config: BitFitConfig) -> list[str]:
    """The layers BitFit will give a trainable bias, in model order (raises if that is none)."""
    types, linear = bias_types(), linear_like_types()
    if config.target_modules is not None:
        allowed = linear if config.target_modules == "all-linear" else types
        names = find_target_modules(model, config.target_modules, allowed_types=allowed)
    else:
        names = [name for name, module in candidate_layers(model, types).items() if _has_bias(module)]
        if config.add_missing_biases:
            names = list(dict.fromkeys(names + find_target_modules(model, "all-linear", allowed_types=linear)))
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        names.sort(key=order.__getitem__)
    if not config.add_missing_biases:
        missing = [name for name in names if not _has_bias(model.get_submodule(name))]
        if missing:
            raise ValueError(f"{len(missing)} targeted layers have no bias (e.g. {missing[:3]}): BitFit would train "
                             "nothing there. Set add_missing_biases=True to add zero-initialised biases, or target "
                             "layers that have one.")
    if not names:
        raise ValueError(f"{type(model).__name__} has no bias terms, so plain BitFit would train nothing. Set "
                         "add_missing_biases=True to add zero-initialised biases to its linear layers.")
    return names


def _has_bias(module: nn.Module) -> bool:
    return module.had_bias if isinstance(module, BitFitLayer) else getattr(module, "bias", None) is not None


@register_tuner
class BitFitTuner(Tuner):
    peft_type = "BITFIT"

    layer_class = BitFitLayer

    def target_names(self, model: nn.Module, config: BitFitConfig) -> list[str]:
        return bitfit_target_names(model, config)

    def after_unload(self, model: nn.Module) -> None:
        """Declare added biases in a Llama-style config (``attention_bias``, ``mlp_bias``): otherwise
        ``save_pretrained`` writes them but ``from_pretrained`` builds bias-free layers and drops them.
        Warns when the config has no such flag for some of them (Qwen2's o_proj and MLP, for one)."""
        config = getattr(model, "config", None)
        for flag, part in (("attention_bias", "self_attn"), ("mlp_bias", "mlp")):
            if config is None or getattr(config, flag, True):
                continue
            if any(f".{part}." in f".{name}." and isinstance(m, nn.Linear) and m.bias is not None
                   for name, m in model.named_modules()):
                setattr(config, flag, True)
        missing = undeclared_biases(model)
        if missing:
            warnings.warn(
                f"{len(missing)} merged biases (e.g. {missing[:2]}) sit on layers that "
                f"{getattr(config, 'model_type', type(model).__name__)!r} models are built without, and its config "
                "has no flag to declare them: from_pretrained of a saved copy would drop them silently. Keep the "
                "BitFit adapter separate (PeftModel.from_pretrained) or save the merged model with torch.save.",
                stacklevel=3)


def undeclared_biases(model: nn.Module) -> list[str]:
    """Modules of ``model`` that have a bias but that transformers would build without one from
    ``model.config`` (built on the meta device): biases a saved and reloaded copy would lose."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    try:
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError):  # not an auto-loadable causal LM: nothing to compare with
        return []
    fresh_modules = dict(fresh.named_modules())
    return [name for name, module in model.named_modules()
            if isinstance(module, linear_like_types()) and module.bias is not None
            and name in fresh_modules and fresh_modules[name].bias is None]
