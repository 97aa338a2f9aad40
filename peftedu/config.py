"""Adapter configs: one dataclass per method, saved as peft's ``adapter_config.json``; and the package's one
check of numeric arguments (:func:`check_number`).

Every method's config subclasses :class:`PeftConfig` and sets ``peft_type`` (the same string HF peft
uses, so a config written here is read by ``peft.PeftConfig.from_pretrained`` and vice versa).
Reading a config written by peft: fields we know are taken; fields we don't know are accepted only
while they hold peft's default value (a feature left switched off). A non-default value of a feature
peftedu lacks is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import ClassVar

CONFIG_NAME = "adapter_config.json"

#: peft_type -> config class; filled by :func:`register_config`.
CONFIG_CLASSES: dict[str, type["PeftConfig"]] = {}

# Values of peft fields that mean "this feature is off" (what peft writes by default).
_OFF_VALUES = (None, False, {}, [], "", "none", "megatron.core")
_IGNORED_KEYS = {"peft_version", "auto_mapping", "revision", "qalora_group_size", "init_lora_weights",
                 "num_transformer_submodules", "num_attention_heads", "num_layers", "token_dim"}


def register_config(cls):
    CONFIG_CLASSES[cls.peft_type] = cls
    return cls


@dataclasses.dataclass
class PeftConfig:
    """Fields shared by every method (names as in peft)."""

    peft_type: ClassVar[str] = ""
    is_prompt_learning: ClassVar[bool] = False
    task_type: str | None = dataclasses.field(default="CAUSAL_LM", metadata={"help": (
        "The kind of model the adapter is for (peft's TaskType). peftedu builds causal language models only, so it "
        "accepts 'CAUSAL_LM' (the default) or None; any other task type is an error.")})
    base_model_name_or_path: str | None = dataclasses.field(default=None, metadata={"help": (
        "Hub id or local folder of the base model the adapter was trained on, recorded in adapter_config.json. None "
        "(the default) is filled from the model's name_or_path when the adapter is added.")})
    inference_mode: bool = dataclasses.field(default=False, metadata={"help": (
        "True: the adapter is loaded for inference only and its tensors are frozen (from_pretrained sets it to not "
        "is_trainable). Default False: the adapter is trainable.")})

    def __post_init__(self):
        if self.task_type not in (None, "CAUSAL_LM"):
            raise ValueError(f"task_type={self.task_type!r}: peftedu builds causal LMs only; use 'CAUSAL_LM'.")

    def to_dict(self) -> dict:
        data = {"peft_type": self.peft_type}
        for field in dataclasses.fields(self):
            if not field.metadata.get("in_config_file", True):
                continue
            value = getattr(self, field.name)
            data[field.name] = sorted(value) if isinstance(value, (set, frozenset)) else value
        return data

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @staticmethod
    def from_dict(data: dict) -> "PeftConfig":
        data = dict(data)
        peft_type = data.pop("peft_type", None)
        if peft_type not in CONFIG_CLASSES:
            raise ValueError(f"Unknown peft_type {peft_type!r}; peftedu knows {sorted(CONFIG_CLASSES)}.")
        cls = CONFIG_CLASSES[peft_type]
        known = {f.name for f in dataclasses.fields(cls)}
        unsupported = {k: v for k, v in data.items()
                       if k not in known and k not in _IGNORED_KEYS and not _is_off(v)}
        if unsupported:
            raise ValueError(
                f"This {peft_type} config uses features peftedu does not implement: {unsupported}. "
                "Remove them (or set them to peft's defaults) to load it here."
            )
        kwargs = {k: v for k, v in data.items() if k in known}
        if cls.is_prompt_learning and kwargs.get("task_type") is None:
            kwargs["task_type"] = "CAUSAL_LM"
        return cls(**kwargs)

    @staticmethod
    def from_pretrained(directory: str | Path) -> "PeftConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(f"No {CONFIG_NAME} in {directory}: is this an adapter folder?")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}): the file is truncated or was edited by hand. "
                             "Save the adapter again with save_pretrained(), or copy the file again.") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of config fields: "
                             "save the adapter again with save_pretrained().")
        return PeftConfig.from_dict(data)


#: How the prompt methods (prompt tuning, P-tuning, prefix tuning) number the positions of the real tokens.
#: "peftedu": from the attention mask (``cumsum(mask) - 1``, pads skipped); prompt tuning's virtual tokens take
#: 0..p-1 and the real tokens p.., a prefix takes no position and the real tokens 0..T-1; so a left-padded row
#: gets the logits it gets alone. "peft": HF peft 0.21's forward, which passes no position ids: positions count
#: every slot, pads included (prompt tuning: 0..p+T-1; prefix tuning: real tokens at p..p+T-1).
POSITION_CONVENTIONS = ("peftedu", "peft")
#: Where a saved adapter records its convention: the safetensors header, which HF peft ignores (an unknown key
#: in adapter_config.json would make peft warn). A file without it was written by HF peft: "peft".
POSITION_METADATA_KEY = "peftedu_position_convention"


def position_convention_field():
    """The ``position_convention`` field of a prompt method's config (kept out of adapter_config.json)."""
    return dataclasses.field(default="peftedu", metadata={"in_config_file": False, "help": (
        "How the real tokens' positions are numbered: 'peftedu' (default; from the attention mask, so a left-padded "
        "row gets the logits it gets alone) or 'peft' (HF peft's forward: every slot counted, pads included). Not "
        "written to adapter_config.json; see POSITION_CONVENTIONS.")})


def check_position_convention(value) -> None:
    if value not in POSITION_CONVENTIONS:
        raise ValueError(f"position_convention must be one of {POSITION_CONVENTIONS}, got {value!r}: 'peftedu' "
                         "numbers real tokens from the attention mask, 'peft' as HF peft's forward does.")


def _is_off(value) -> bool:
    return any(value == off and type(value) is type(off) for off in _OFF_VALUES)


def check_number(name: str, value, *, integer: bool = False, at_least: float | None = None,
                 below: float | None = None) -> None:
    """The package's one check of a numeric argument: a ValueError that says what was wrong and what would be right.

    By default ``value`` must be positive (> 0): ``check_number("lora_alpha", 16)``. ``integer=True`` (ranks, token
    and layer counts) refuses fractions such as ``r=2.5``: torch would fail later, far from the mistake.
    ``at_least=0`` allows zero (``weight_decay``); ``below=1`` with ``at_least=0`` is a probability such as a
    dropout rate, in [0, 1). Booleans are refused everywhere (``True`` is not a rank).
    """
    word = "integer" if integer else "number"
    allowed = numbers.Integral if integer else numbers.Real
    if (not isinstance(value, bool) and isinstance(value, allowed)
            and (value >= at_least if at_least is not None else value > 0) and (below is None or value < below)):
        return
    if below is not None:
        raise ValueError(f"{name} must be in [{at_least if at_least is not None else 0}, {below}), got {value!r}.")
    if at_least is not None:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} >= {at_least}, got {value!r}.")
    hint = " (a count of ranks, tokens or layers is a whole number)" if integer and isinstance(value, float) else ""
    raise ValueError(f"{name} must be a positive {word}, got {value!r}{hint}.")


@dataclasses.dataclass
class PromptLearningConfig(PeftConfig):
    """Fields HF peft's prompt methods share (prompt tuning, P-tuning, prefix tuning), as peft declares them in
    its ``PromptLearningConfig``. ``token_dim``, ``num_layers`` and ``num_attention_heads`` are filled from the
    model when the adapter is added; what each means for a method is said in the method's config docstring."""

    is_prompt_learning: ClassVar[bool] = True
    num_virtual_tokens: int | None = dataclasses.field(default=None, metadata={"help": (
        "The number p of virtual tokens: the soft prompt's length (prompt tuning, Lester et al. 2021; P-tuning, Liu "
        "et al. 2021) or the prefix length, the paper's |P_idx| (prefix tuning, Li & Liang 2021). Required: a "
        "positive integer (the default None is an error).")})
    token_dim: int | None = dataclasses.field(default=None, metadata={"help": (
        "The width of one virtual token: the embedding width d (prompt tuning, P-tuning), or the key/value width "
        "kv_heads × head_dim (prefix tuning; smaller than d with grouped-query attention). Default None: filled from "
        "the model when the adapter is added; a different value is an error.")})
    num_layers: int | None = dataclasses.field(default=None, metadata={"help": (
        "The model's number L of transformer layers: each gets its own prefix (prefix tuning); recorded for peft "
        "only (prompt tuning, P-tuning). Default None: filled from the model's config when the adapter is added.")})
    num_attention_heads: int | None = dataclasses.field(default=None, metadata={"help": (
        "Attention heads, as peft stores them: the key/value heads the prefix is split into (prefix tuning); recorded "
        "for peft only (prompt tuning, P-tuning). Default None: filled from the model's config when the adapter is "
        "added.")})
    num_transformer_submodules: int | None = dataclasses.field(default=1, metadata={"help": (
        "peft's count of transformer stacks (2 for encoder-decoder models). peftedu builds decoder-only models, so "
        "it must be 1 (default) or None.")})
    position_convention: str = position_convention_field()  # "peftedu" or "peft": see POSITION_CONVENTIONS

    def __post_init__(self):
        super().__post_init__()
        check_number("num_virtual_tokens", self.num_virtual_tokens, integer=True)
        check_position_convention(self.position_convention)
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError("num_transformer_submodules must be 1: peftedu builds decoder-only causal LMs.")
