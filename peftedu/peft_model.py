"""``get_peft_model`` and ``PeftModel``: the wrapper every method shares, with HF peft's API.

The wrapper freezes the base model, asks the method's :class:`~peftedu.tuners.Tuner` to add its
tensors, and then offers what a learner will meet again in peft: ``print_trainable_parameters``,
``save_pretrained`` / ``PeftModel.from_pretrained`` (peft's file layout: ``adapter_config.json`` +
``adapter_model.safetensors``), several named adapters (``add_adapter``, ``set_adapter``,
``delete_adapter``, ``disable_adapter()``), merging (``merge_adapter``, ``unmerge_adapter``,
``merge_and_unload``) and mixed batches (``adapter_names=`` gives each row its adapter).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import POSITION_METADATA_KEY, PeftConfig, check_position_convention
from .counting import count_parameters, print_trainable_parameters
from .merging import add_weighted_adapter
from .tuners import AdapterLayer, ModulesToSaveWrapper, get_tuner, replace_module, wrap_modules_to_save

WEIGHTS_NAME = "adapter_model.safetensors"


class PeftModel(nn.Module):
    def __init__(self, model: nn.Module, config: PeftConfig, adapter_name: str = "default"):
        super().__init__()
        self.base_model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter = adapter_name
        self._adapters_disabled = False
        for param in model.parameters():
            param.requires_grad_(False)
        self.add_adapter(adapter_name, config)

    # ------------------------------------------------------------------ adapters
    @property
    def tuner(self):
        return get_tuner(self.peft_config[self.active_adapter].peft_type)

    def add_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        """Add a new adapter (same method as the others) and make it the active one."""
        if adapter_name in self.peft_config:
            raise ValueError(f"An adapter named {adapter_name!r} exists already; pick another name.")
        if self.peft_config:
            first = next(iter(self.peft_config.values()))
            if first.peft_type != config.peft_type:
                raise ValueError(f"This model holds {first.peft_type} adapters; a {config.peft_type} adapter "
                                 "cannot be added beside them. Wrap a fresh base model instead.")
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(self.base_model, "name_or_path", None)
        tuner = get_tuner(config.peft_type)
        self.peft_config[adapter_name] = config
        try:
            # Layer methods change modules inside self.base_model; prompt methods keep their encoders on
            # the wrapper (``self.prompt_encoder[adapter_name]``, as HF peft does).
            tuner.inject(self, config, adapter_name)
            if getattr(config, "modules_to_save", None):
                wrap_modules_to_save(self.base_model, config.modules_to_save, adapter_name)
        except Exception:
            del self.peft_config[adapter_name]
            raise
        self.set_adapter(adapter_name)

    def set_adapter(self, adapter_name: str) -> None:
        self._check_known(adapter_name)
        self.active_adapter = adapter_name
        self.tuner.set_adapter(self, [adapter_name])
        if self.peft_config[adapter_name].inference_mode:
            for tensor in self.tuner.named_adapter_tensors(self, adapter_name).values():
                tensor.requires_grad_(False)

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_known(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(f"{adapter_name!r} is the only adapter; use merge_and_unload() or "
                             "unload() to get the base model back instead.")
        self.tuner.delete_adapter(self, adapter_name)
        del self.peft_config[adapter_name]
        if self.active_adapter == adapter_name:
            self.set_adapter(next(iter(self.peft_config)))

    def _check_known(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"Unknown adapter {adapter_name!r}; this model has {list(self.peft_config)}.")

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model alone inside the ``with`` block (merged weights are unmerged first)."""
        layers = self.tuner.layers(self.base_model)
        for layer in layers:
            if layer.merged:
                layer.unmerge()
            layer.disabled = True
        self._adapters_disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False
            self._adapters_disabled = False

    # ------------------------------------------------------------------ running
    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The wrapped model's forward. Positional arguments go through as they are (a plain ``nn.Module``
        takes its input that way), except for prompt methods, whose first positional argument is ``input_ids``."""
        if args and self.tuner.is_prompt_learning:
            kwargs["input_ids"], args = args[0], args[1:]
        with self._rows(adapter_names):
            if self._adapters_disabled:
                return self.base_model(*args, **kwargs)
            return self.tuner.forward(self, *args, **kwargs)

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        if args:
            kwargs["input_ids"] = args[0]
        with self._rows(adapter_names):
            if self._adapters_disabled:
                return self.base_model.generate(**kwargs)
            return self.tuner.generate(self, **kwargs)

    @contextlib.contextmanager
    def _rows(self, adapter_names):
        """Mixed batch: row i uses adapter ``adapter_names[i]`` (``"__base__"`` for none)."""
        if adapter_names is None:
            yield
            return
        known = set(self.peft_config) | {"__base__"}
        unknown = sorted(set(adapter_names) - known)
        if unknown:
            raise ValueError(f"adapter_names has unknown adapters {unknown}; known: {sorted(known)}.")
        layers = self.tuner.layers(self.base_model)
        if not layers or self.tuner.is_prompt_learning:
            raise ValueError("Mixed batches (adapter_names=) need a layer method such as LoRA or IA3.")
        if any(layer.merged for layer in layers):
            raise ValueError("Mixed batches need unmerged adapters: call unmerge_adapter() first.")
        for layer in layers:
            layer.row_adapters = list(adapter_names)
        try:
            yield
        finally:
            for layer in layers:
                layer.row_adapters = None

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            # methods a tuner offers on the model itself, e.g. AdaLoRA's update_and_allocate(step)
            config = self.__dict__.get("peft_config", {}).get(self.__dict__.get("active_adapter"))
            if config is not None and name in get_tuner(config.peft_type).model_methods:
                method = getattr(get_tuner(config.peft_type), name)
                return lambda *args, **kwargs: method(self, *args, **kwargs)
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ counting
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        print_trainable_parameters(self)

    # ------------------------------------------------------------------ merging
    def _layers_for_merge(self):
        layers = [layer for layer in self.tuner.layers(self.base_model)
                  if not isinstance(layer, ModulesToSaveWrapper)]
        if not layers:
            raise ValueError(f"{self.peft_config[self.active_adapter].peft_type} adds no mergeable layers.")
        return layers

    def merge_adapter(self, adapter_names: list[str] | None = None) -> None:
        """Fold the active adapter(s) into the base weights: W <- W + delta. Refused if already merged."""
        adapter_names = adapter_names or [self.active_adapter]
        for name in adapter_names:
            self._check_known(name)
        layers = self._layers_for_merge()
        if any(layer.merged for layer in layers):
            raise ValueError("The adapter is merged already; merging again would add its update twice. "
                             "Call unmerge_adapter() first.")
        for layer in layers:
            layer.merge(adapter_names)

    def unmerge_adapter(self) -> None:
        layers = self._layers_for_merge()
        if not any(layer.merged for layer in layers):
            raise ValueError("Nothing is merged; call merge_adapter() first.")
        for layer in layers:
            if layer.merged:
                layer.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapter and return the plain transformers model (adapter layers removed)."""
        layers = self._layers_for_merge()
        if not any(layer.merged for layer in layers):
            self.merge_adapter()
        return self.unload()

    def add_weighted_adapter(self, adapters, weights, adapter_name, combination_type="svd", svd_rank=None) -> None:
        """Add a LoRA adapter combining ``adapters`` with ``weights`` (see :mod:`peftedu.merging`)."""
        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank)

    def unload(self) -> nn.Module:
        """Remove every adapter layer, putting the (possibly merged) base layers back."""
        model = self.base_model
        for name, module in list(model.named_modules()):
            if isinstance(module, ModulesToSaveWrapper):
                # the trained copy replaces the original, as in peft
                keep = module.modules_to_save[self.active_adapter] if self.active_adapter in \
                    module.modules_to_save else module.base_layer
                replace_module(model, name, keep)
            elif isinstance(module, AdapterLayer):
                replace_module(model, name, module.unwrap())
        self.tuner.after_unload(model)
        return model

    # ------------------------------------------------------------------ saving and loading
    def state_dict_to_save(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        adapter_name = adapter_name or self.active_adapter
        state = {k: v.detach().to("cpu").contiguous().clone()
                 for k, v in self.tuner.named_adapter_tensors(self, adapter_name).items()}
        # a tuner may save something other than its live tensors (AdaLoRA: only the kept ranks)
        return self.tuner.translate_saved_state(self, state, adapter_name)

    def save_pretrained(self, directory: str | Path, selected_adapters: list[str] | None = None) -> None:
        """peft's layout: the default adapter at the top, any other in a sub-folder of its name."""
        directory = Path(directory)
        for name in selected_adapters or list(self.peft_config):
            target = directory if name == "default" else directory / name
            target.mkdir(parents=True, exist_ok=True)
            config = self.peft_config[name]
            config.save_pretrained(target)
            metadata = {"format": "pt"}
            if hasattr(config, "position_convention"):  # the prompt methods' convention travels with the weights
                metadata[POSITION_METADATA_KEY] = config.position_convention
            save_file(self.state_dict_to_save(name), str(target / WEIGHTS_NAME), metadata=metadata)

    def load_adapter(self, directory: str | Path, adapter_name: str, is_trainable: bool = False,
                     position_convention: str | None = None) -> None:
        """Load a saved adapter (peftedu's or HF peft's) as ``adapter_name``; see :meth:`from_pretrained`."""
        config, state = load_config_and_weights(directory, is_trainable, position_convention)
        self.add_adapter(adapter_name, config)
        self.load_adapter_state_dict(state, adapter_name)
        self.set_adapter(adapter_name)

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor], adapter_name: str) -> None:
        """Copy saved tensors into an adapter built from the same config; every mismatch is an error."""
        # translate first: it may reshape the adapter to fit the file (AdaLoRA's rank_pattern)
        state = self.tuner.translate_loaded_state(self, state, adapter_name)
        live = self.tuner.named_adapter_tensors(self, adapter_name)
        missing = sorted(set(live) - set(state))
        unexpected = sorted(set(state) - set(live))
        if missing or unexpected:
            raise ValueError(f"Adapter file does not fit this model: missing tensors {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected tensors {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''}. Was it trained on another base model?")
        for key, tensor in live.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise ValueError(f"Tensor {key} has shape {tuple(state[key].shape)} in the file but "
                                 f"{tuple(tensor.shape)} in this model: the adapter was trained on a base of "
                                 "another shape.")
            with torch.no_grad():
                tensor.copy_(state[key].to(tensor.dtype))

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, adapter_name: str = "default",
                        is_trainable: bool = False, position_convention: str | None = None) -> "PeftModel":
        """Load an adapter saved by peftedu or by HF peft onto ``model``.

        Prompt methods: ``position_convention`` (``"peftedu"`` or ``"peft"``, see ``config.POSITION_CONVENTIONS``)
        defaults to the file's own: what peftedu recorded when it saved, and ``"peft"`` for a file written by HF
        peft, so a peft-trained prompt or prefix gives peft's forward outputs here too.
        """
        config, state = load_config_and_weights(directory, is_trainable, position_convention)
        peft_model = cls(model, config, adapter_name)
        peft_model.load_adapter_state_dict(state, adapter_name)
        return peft_model


def load_config_and_weights(directory: str | Path, is_trainable: bool, position_convention: str | None):
    """The adapter's config (its prompt methods' position convention from the file unless given) and tensors."""
    config = PeftConfig.from_pretrained(directory)
    config.inference_mode = not is_trainable
    state, metadata = load_weights(directory)
    if hasattr(config, "position_convention"):
        config.position_convention = position_convention or metadata.get(POSITION_METADATA_KEY, "peft")
        check_position_convention(config.position_convention)
    elif position_convention is not None:
        raise ValueError(f"position_convention is for prompt methods; this adapter is {config.peft_type}.")
    return config, state


def load_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of ``directory/adapter_model.safetensors`` and the file's metadata; a missing or damaged
    file names itself."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(f"No {WEIGHTS_NAME} in {directory}: save the adapter with save_pretrained() "
                                "(peftedu and HF peft both write this file; .bin files are not read).")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) on a damaged file
        raise ValueError(f"{path} cannot be read as safetensors ({err}): the file is truncated or damaged "
                         "(an interrupted copy or download?). Save the adapter again with save_pretrained(), "
                         "or copy the file again.") from err


def get_peft_model(model: nn.Module, config: PeftConfig, adapter_name: str = "default") -> PeftModel:
    """Freeze ``model`` and add one adapter described by ``config`` (the model is changed in place)."""
    if isinstance(model, PeftModel):
        raise ValueError("This model is wrapped already; use add_adapter() for a second adapter.")
    return PeftModel(model, config, adapter_name)
