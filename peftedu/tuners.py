"""What every method shares (HF peft's ``tuners_utils``): finding target modules, wrapping layers, naming saved
tensors.

* :func:`find_target_modules` is the package's one target matcher (peft's rules: a list of name suffixes, a
  regex for the whole name, or ``"all-linear"``); every method and the course's counters ask it, and
  :func:`peftedu.quant.quantize_model` names its skipped modules by the same rule (:func:`matches_name`).
* :class:`Tuner` is the method protocol; its :meth:`Tuner.inject` is the one wrap loop, changed by named hooks.

Two families of methods exist and this module serves both:

* **Layer methods** (BitFit, adapters, LoRA, DoRA, AdaLoRA, IA3, LLaMA-Adapter) change modules inside
  the model. Each wraps a target layer in a :class:`AdapterLayer` that keeps the original as
  ``base_layer`` and holds one set of new tensors per adapter name (``lora_A["default"]``...).
* **Prompt methods** (prompt tuning, P-tuning, prefix tuning) leave the model alone and change its
  inputs; they override :meth:`Tuner.inject`, :meth:`Tuner.forward` and :meth:`Tuner.generate`.

Saved tensor names follow HF peft so the files are interchangeable: the model's parameter name with
``base_model.model.`` in front and the adapter name removed
(``model.layers.0.self_attn.q_proj.lora_A.default.weight`` is saved as
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``).
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from .quant import Linear4bit

SAVED_PREFIX = "base_model.model."

#: peft_type -> Tuner instance; filled by :func:`register_tuner`.
TUNERS: dict[str, "Tuner"] = {}


def register_tuner(cls):
    TUNERS[cls.peft_type] = cls()
    return cls


def get_tuner(peft_type: str) -> "Tuner":
    if peft_type not in TUNERS:
        raise ValueError(f"No method registered for peft_type {peft_type!r}; known: {sorted(TUNERS)}.")
    return TUNERS[peft_type]


# ----------------------------------------------------------------------------- finding targets
def linear_types() -> tuple[type, ...]:
    """Layer classes a method may wrap: nn.Linear and our 4-bit linear (QLoRA)."""
    return (nn.Linear, Linear4bit)


def matches_name(name: str, entry: str) -> bool:
    """peft's rule for a list entry: the whole module name, or a dotted suffix of it ("mlp.down_proj")."""
    return name == entry or name.endswith("." + entry)


def candidate_layers(model: nn.Module, allowed_types) -> dict[str, nn.Module]:
    """``name -> module`` for every module of ``allowed_types``, in model order; an already wrapped layer
    (:class:`AdapterLayer`) stands for its base layer and nothing inside it is a candidate."""
    candidates, inside_wrapper = {}, ()
    for name, module in model.named_modules():
        if inside_wrapper and name.startswith(inside_wrapper):
            continue  # the base layer and adapter tensors inside an already wrapped layer
        if isinstance(module, AdapterLayer):
            inside_wrapper = name + "."
            if isinstance(module.base_layer, allowed_types):
                candidates[name] = module
        elif isinstance(module, allowed_types):
            candidates[name] = module
    return candidates


def find_target_modules(model: nn.Module, target_modules, *, allowed_types=None, what="target_modules") -> list[str]:
    """Names of the modules a config targets, in model order.

    ``target_modules`` is a list of name suffixes (``["q_proj", "v_proj"]`` matches
    ``model.layers.3.self_attn.q_proj``; dotted ones like ``"mlp.down_proj"`` too), a regular
    expression that must match the *whole* name, or ``"all-linear"`` (every linear layer except the
    output head). Matching nothing is an error that lists the names that exist, never a silent no-op.
    """
    allowed_types = allowed_types or linear_types()
    candidates = candidate_layers(model, allowed_types)
    hint = ""
    if target_modules == "all-linear":
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        names = [name for name, module in candidates.items()
                 if module is not output and getattr(module, "base_layer", None) is not output]
    elif isinstance(target_modules, str):
        names = [name for name in candidates if re.fullmatch(target_modules, name)]
        hint = (" A string is a regular expression that must match the whole name "
                "(e.g. r'.*\\.(q_proj|v_proj)'); a list of names matches suffixes.")
    elif isinstance(target_modules, (list, tuple, set, frozenset)) and target_modules \
            and all(isinstance(t, str) and t for t in target_modules):
        targets = set(target_modules)
        names = [name for name in candidates if any(matches_name(name, t) for t in targets)]
        unused = sorted(t for t in targets if not any(matches_name(n, t) for n in names))
        hint = _wrong_type_hint(model, unused, allowed_types)
        if names and unused:
            raise ValueError(f"{what} entries {unused} match no module; the rest matched. Known layer names: "
                             f"{_short_names(candidates)}.{hint}")
    else:
        raise ValueError(f"{what} must be a non-empty list of names, a regex string or 'all-linear'; "
                         f"got {target_modules!r}.")
    if not names:
        raise ValueError(
            f"{what}={target_modules!r} matched no module of type "
            f"{'/'.join(t.__name__ for t in allowed_types)} in {type(model).__name__}. "
            f"Layer names that exist: {_short_names(candidates)} (full names look like "
            f"{next(iter(candidates), '<none>')!r}).{hint}"
        )
    return names


def _wrong_type_hint(model: nn.Module, entries, allowed_types) -> str:
    """For entries that name modules of another type (``"mlp"`` is a LlamaMLP): say so, as peft does."""
    found = sorted({type(module).__name__ for name, module in model.named_modules()
                    if any(matches_name(name, e) for e in entries) and not isinstance(module, allowed_types)})
    return (f" {entries} name modules of type {found}, which this method does not wrap: name the "
            f"{'/'.join(t.__name__ for t in allowed_types)} layers inside them.") if found else ""


def _short_names(candidates) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in candidates})


def default_for_architecture(table: dict, model_or_type, what: str, hint: str):
    """``table[model_type]`` for a model (or a ``model_type`` string): the per-architecture defaults of a method
    (peft's ``TRANSFORMERS_MODELS_TO_*`` tables). An architecture without an entry raises, naming the known ones
    and, in ``hint``, what to pass instead."""
    model_type = model_or_type if isinstance(model_or_type, str) else \
        getattr(getattr(model_or_type, "config", None), "model_type", None)
    if model_type not in table:
        raise ValueError(f"No default {what} for model_type {model_type!r} (known: {sorted(table)}); {hint}")
    return table[model_type]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def module_device(module: nn.Module) -> torch.device:
    """The device new tensors must be built on (meta included) -- a method never assumes the CPU."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a layer computes in: a 4-bit layer's ``compute_dtype``, else its first float parameter's
    dtype, else float32."""
    dtype = getattr(module, "compute_dtype", None)
    if dtype is not None:
        return dtype
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


# ----------------------------------------------------------------------------- wrapped layers
class AdapterLayer(nn.Module):
    """Base of every wrapped layer: the frozen ``base_layer`` plus per-adapter tensors.

    Subclasses list the attributes that hold per-adapter ModuleDicts/ParameterDicts in
    ``adapter_attributes`` and implement ``forward`` (and ``merge``/``unmerge`` if they can merge).
    """

    adapter_attributes: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        # Per-row adapter names for a mixed batch (set by PeftModel around one call).
        self.row_adapters: list[str] | None = None

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def adapter_names(self) -> list[str]:
        names: list[str] = []
        for attr in self.adapter_attributes:
            for key in getattr(self, attr).keys():
                if key not in names:
                    names.append(key)
        return names

    def set_adapter(self, names: list[str]) -> None:
        """Activate ``names``; only active adapters' tensors train."""
        self.active_adapters = [n for n in names if n in self.adapter_names()]
        for attr in self.adapter_attributes:
            for key, holder in getattr(self, attr).items():
                tensors = [holder] if isinstance(holder, nn.Parameter) else list(holder.parameters())
                for tensor in tensors:
                    tensor.requires_grad_(key in self.active_adapters)

    def delete_adapter(self, name: str) -> None:
        for attr in self.adapter_attributes:
            container = getattr(self, attr)
            if name in container:
                del container[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]

    def merge(self, adapter_names: list[str]) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weight.")

    def unmerge(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weight.")

    def unwrap(self) -> nn.Module:
        """The module that takes this wrapper's place on ``unload()`` (merged or not): the base layer."""
        return self.base_layer


class ModulesToSaveWrapper(AdapterLayer):
    """A fully trainable copy of a module (peft's ``modules_to_save``), one copy per adapter."""

    adapter_attributes = ("modules_to_save",)

    def __init__(self, base_layer: nn.Module, adapter_name: str):
        super().__init__(base_layer)
        self.modules_to_save = nn.ModuleDict()
        self.add(adapter_name)
        self.set_adapter([adapter_name])

    def add(self, adapter_name: str) -> None:
        self.modules_to_save[adapter_name] = copy.deepcopy(self.base_layer)

    def forward(self, *args, **kwargs):
        if self.disabled or not self.active_adapters:
            return self.base_layer(*args, **kwargs)
        return self.modules_to_save[self.active_adapters[0]](*args, **kwargs)

    def __getattr__(self, name):  # e.g. ``embed_tokens.weight`` still answers
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_layer, name)


def wrap_modules_to_save(model: nn.Module, names, adapter_name: str) -> None:
    """Give each module named (by suffix) in ``names`` a trainable copy for this adapter."""
    if not names:
        return
    all_modules = dict(model.named_modules())
    matched = [n for n, m in all_modules.items() if n.rsplit(".", 1)[-1] in set(names)
               and not isinstance(m, ModulesToSaveWrapper) and ".modules_to_save." not in n
               and not n.endswith(".base_layer")]
    missing = sorted(set(names) - {n.rsplit(".", 1)[-1] for n in matched} -
                     {n.rsplit(".", 1)[-1] for n, m in all_modules.items() if isinstance(m, ModulesToSaveWrapper)})
    if missing:
        raise ValueError(f"modules_to_save {missing} match no module; top-level names include "
                         f"{sorted({n.rsplit('.', 1)[-1] for n in all_modules if n.count('.') <= 2 and n})}.")
    for name, module in all_modules.items():
        if isinstance(module, ModulesToSaveWrapper) and name.rsplit(".", 1)[-1] in set(names):
            module.add(adapter_name)
            module.set_adapter([adapter_name])
    for name in matched:
        replace_module(model, name, ModulesToSaveWrapper(all_modules[name], adapter_name))


# ----------------------------------------------------------------------------- the method protocol
class Tuner:
    """One per method: HF peft's ``BaseTuner``, reduced to what the methods here need.

    **Layer methods** name their wrapper in ``layer_class`` and inherit :meth:`inject`, the one wrap loop of
    the package: find the targets, wrap each layer not wrapped yet, add the adapter's tensors to it. A method
    changes a step by overriding a hook; each defaults to the common case: :meth:`target_names` (the config's
    ``target_modules`` among linear layers), :meth:`create_layer` (``layer_class(module)``) and
    :meth:`check_layer` (nothing to check).

    **Prompt methods** (``is_prompt_learning = True``) leave the model's modules alone: they override
    :meth:`inject` to register their encoders on the :class:`~peftedu.peft_model.PeftModel` as
    ``peft_model.prompt_encoder[adapter_name]`` (HF peft's parameter names), and :meth:`forward` /
    :meth:`generate` to feed them in.

    Every method may override the saving, loading and unloading hooks (:meth:`translate_saved_state`,
    :meth:`translate_loaded_state`, :meth:`after_unload`) and list in ``model_methods`` the methods a
    ``PeftModel`` forwards to it (AdaLoRA's ``update_and_allocate``).
    """

    peft_type: str = ""
    is_prompt_learning = False
    #: the wrapper a layer method puts around each target layer
    layer_class: type[AdapterLayer] | None = None
    #: tuner methods a PeftModel exposes as its own (``peft_model.name(*args)`` -> ``tuner.name(peft_model, *args)``)
    model_methods: tuple[str, ...] = ()

    def inject(self, peft_model, config, adapter_name: str) -> None:
        """Add adapter ``adapter_name`` to the model (peft's ``inject_adapter``): the one wrap loop."""
        model = peft_model.base_model
        for name in self.target_names(model, config):
            module = model.get_submodule(name)
            if isinstance(module, self.layer_class):
                self.check_layer(module, name, config)
            else:
                module = self.create_layer(module, name, config)
                replace_module(model, name, module)
            module.add(adapter_name, config)

    def target_names(self, model: nn.Module, config) -> list[str]:
        """Full names of the layers to wrap, in model order (hook; default: ``config.target_modules``)."""
        return find_target_modules(model, config.target_modules)

    def create_layer(self, module: nn.Module, name: str, config) -> AdapterLayer:
        """The wrapper for a layer met for the first time (hook; default: ``layer_class(module)``)."""
        return self.layer_class(module)

    def check_layer(self, layer: AdapterLayer, name: str, config) -> None:
        """Raise if an already wrapped layer cannot take this adapter (hook; default: it always can)."""

    def layers(self, model: nn.Module) -> list[AdapterLayer]:
        return [m for m in model.modules() if isinstance(m, AdapterLayer)]

    def set_adapter(self, peft_model, names: list[str]) -> None:
        for layer in self.layers(peft_model.base_model):
            layer.set_adapter(names)

    def delete_adapter(self, peft_model, name: str) -> None:
        for layer in self.layers(peft_model.base_model):
            layer.delete_adapter(name)

    def named_adapter_tensors(self, peft_model, adapter_name: str) -> dict[str, torch.Tensor]:
        """saved name (peft's layout) -> the live tensor, for one adapter."""
        out = {}
        for layer_name, layer in peft_model.base_model.named_modules():
            if not isinstance(layer, AdapterLayer):
                continue
            for attr in layer.adapter_attributes:
                container = getattr(layer, attr)
                if adapter_name not in container:
                    continue
                holder = container[adapter_name]
                prefix = layer_name if attr == "modules_to_save" else f"{layer_name}.{attr}"
                if isinstance(holder, torch.Tensor):
                    out[SAVED_PREFIX + prefix] = holder
                else:
                    for name, tensor in list(holder.named_parameters()) + list(holder.named_buffers()):
                        out[f"{SAVED_PREFIX}{prefix}.{name}"] = tensor
        return out

    def translate_saved_state(self, peft_model, state: dict, adapter_name: str) -> dict:
        """The tensors to save, in peft's layout, from the live ones (hook; default: as they are)."""
        return state

    def translate_loaded_state(self, peft_model, state: dict, adapter_name: str) -> dict:
        """The tensors to load, from a saved file's (hook; default: as they are)."""
        return state

    def after_unload(self, model: nn.Module) -> None:
        """Called by ``unload``/``merge_and_unload`` with the plain model, e.g. to update its config (hook)."""

    def forward(self, peft_model, *args, **kwargs):
        return peft_model.base_model(*args, **kwargs)

    def generate(self, peft_model, **kwargs):
        return peft_model.base_model.generate(**kwargs)
