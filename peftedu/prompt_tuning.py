"""Prompt tuning (提示微调, Lester et al. 2021, arXiv:2104.08691): p trainable vectors in front of the input.

**Hard prompt vs soft prompt.** A *hard* prompt (硬提示) is text a person writes ("Classify the sentiment:"):
discrete tokens, each one row of the frozen embedding table E. A *soft* prompt (软提示) drops the constraint
that the rows come from E: p free vectors P in R^{p x d}, learned by gradient descent while the model stays
frozen. The model reads::

    inputs_embeds = [P_1, ..., P_p, E[x_1], ..., E[x_n]]        (batch, p + n, d)
    loss = CE(LM(inputs_embeds)[p:], x)                         the prompt's label positions are -100

Trainable parameters: p * d (``num_virtual_tokens * token_dim``): bloom-1b4-zh (d = 2048) 8 tokens ->
16,384, 10 -> 20,480; SmolLM2-135M (d = 576) 20 -> 11,520.

**Initialisation** (as peft): ``RANDOM`` -- nn.Embedding's N(0, 1): rows of norm ~sqrt(d) = 24 on
SmolLM2, whose real token rows have median norm 3.2 (random init trained worst in Lester et al.);
``TEXT`` -- the rows E[t] of the tokens of ``prompt_tuning_init_text`` (``tokenizer(text)["input_ids"]``,
special tokens included), cut to p or repeated until p; ``SAMPLE_VOCAB`` -- rows of p random vocabulary
tokens. TEXT and SAMPLE_VOCAB start the soft prompt *on* the embedding manifold, i.e. as a hard prompt.

**Conventions (stated and tested).**

* The prompt is part of the sequence: attention mask ones for it, labels -100, and it takes positions
  0..p-1. Positions are counted from the attention mask (``cumsum(mask) - 1``, as ``generate`` counts them),
  so the first real token is at p whatever the left padding: a left-padded batch gives each row the logits
  it gets alone, and ``forward`` agrees with ``generate``. The order is ``[prompt][pads][tokens]``: the
  prompt goes before the padded batch, as in peft. Without left padding these are peft's positions exactly;
  peft's ``forward`` passes no position ids, so with left padding its pads shift the real tokens.
* ``position_ids`` passed by the caller number the real tokens from 0; they are shifted by p.
* ``position_convention="peft"`` (the config field; what a file written by HF peft loads with) passes no
  position ids, as peft's ``forward`` does: the positions then count every slot, pads included, so a
  peft-trained prompt gives peft's logits on left-padded rows too. ``generate`` numbers positions from the
  mask in both conventions (as peft's ``generate`` with ``use_cache=False`` does).
* A cache that already holds the prompt (step-by-step decoding) is continued: no second prompt.
* ``generate`` feeds ``[prompt; E[input_ids]]`` as ``inputs_embeds`` and returns ``input_ids`` followed
  by the new tokens (peft's output). ``max_length`` counts real tokens only, as in peft.
  HF peft 0.21.2's own ``generate`` with transformers 5.24 is only correct with ``use_cache=False``
  (it looks for ``past_key_values``, transformers now says ``cache``, so it re-inserts the prompt at every
  step); the tests compare with that.
* Saved file (peft's layout): one tensor, ``prompt_embeddings`` (p, d). The prompt encoders live beside
  the frozen model, ``peft_model.prompt_encoder[adapter_name]`` (peft's parameter names), in fp32.
  ``from_pretrained(..., is_trainable=True)`` continues training P (HF peft refuses it for prompt methods);
  with TEXT init the tokenizer is loaded again first (the init is then overwritten by the file).

P-tuning (:mod:`peftedu.p_tuning`) reuses all of this; only the encoder that makes P differs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer

from .config import PromptLearningConfig, register_config
from .prefix_tuning import positions_from_mask
from .tuners import Tuner, module_device, register_tuner

INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")


@register_config
@dataclasses.dataclass
class PromptTuningConfig(PromptLearningConfig):
    """peft's ``PromptTuningConfig``. ``tokenizer``: a tokenizer object for TEXT init instead of loading
    ``tokenizer_name_or_path`` (never saved; its ``name_or_path`` is saved, so peft can read the config)."""

    peft_type = "PROMPT_TUNING"
    prompt_tuning_init: str = dataclasses.field(default="RANDOM", metadata={"help": (
        "How the soft prompt starts (Lester et al. 2021 compare such inits): 'RANDOM' (default, N(0, 1)), 'TEXT' "
        "(the embeddings of prompt_tuning_init_text's tokens) or 'SAMPLE_VOCAB' (the paper's sampled vocabulary: "
        "embeddings of p random tokens).")})
    prompt_tuning_init_text: str | None = dataclasses.field(default=None, metadata={"help": (
        "The text whose token embeddings start the prompt, cut to or repeated to p tokens. Required with "
        "prompt_tuning_init='TEXT', unused otherwise; default None.")})
    tokenizer_name_or_path: str | None = dataclasses.field(default=None, metadata={"help": (
        "Hub id or local folder of the tokenizer for 'TEXT' init (filled from tokenizer's name_or_path when a "
        "tokenizer object is given). Default None; required with 'TEXT'.")})
    tokenizer_kwargs: dict | None = dataclasses.field(default=None, metadata={"help": (
        "Keyword arguments for AutoTokenizer.from_pretrained when loading tokenizer_name_or_path ('TEXT' init only). "
        "Default None.")})
    tokenizer: Any = dataclasses.field(default=None, repr=False, compare=False, metadata={"help": (
        "A tokenizer object to use for 'TEXT' init instead of loading tokenizer_name_or_path (peftedu's addition). "
        "Never saved, not compared; default None.")})

    def __post_init__(self):
        super().__post_init__()
        self.prompt_tuning_init = str(getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init))
        if self.prompt_tuning_init not in INITS:
            raise ValueError(f"prompt_tuning_init must be one of {INITS}, got {self.prompt_tuning_init!r}.")
        if self.prompt_tuning_init == "TEXT":
            if not self.prompt_tuning_init_text:
                raise ValueError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text, e.g. "
                                 "'Classify the sentiment of this review:'.")
            if self.tokenizer is not None and not self.tokenizer_name_or_path:
                self.tokenizer_name_or_path = getattr(self.tokenizer, "name_or_path", None)
            if not self.tokenizer_name_or_path:
                raise ValueError("prompt_tuning_init='TEXT' needs tokenizer_name_or_path (a hub id or a local "
                                 "folder) or tokenizer=<the model's tokenizer>.")
        elif self.tokenizer_kwargs:
            raise ValueError("tokenizer_kwargs is only used with prompt_tuning_init='TEXT'.")

    def to_dict(self) -> dict:
        data = super().to_dict()
        del data["tokenizer"]  # an object, not JSON; tokenizer_name_or_path names it
        return data


def fill_from_model(config, model: nn.Module) -> None:
    """Fill token_dim / num_layers / num_attention_heads from the model's config (peft's rule)."""
    mc = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    get = lambda *names: next((getattr(mc, n) for n in names if getattr(mc, n, None) is not None), None)
    found = {"token_dim": model.get_input_embeddings().weight.shape[1],
             "num_layers": get("num_hidden_layers", "n_layer", "num_layers"),
             "num_attention_heads": get("num_attention_heads", "n_head", "num_heads")}
    for field, value in found.items():
        if getattr(config, field) is None:
            setattr(config, field, value)
        elif field == "token_dim" and config.token_dim != value:
            raise ValueError(f"token_dim={config.token_dim} in the config, but this model's embeddings have "
                             f"width {value}: the adapter was made for another model.")


def init_token_ids(config: PromptTuningConfig, vocab_size: int) -> list[int] | None:
    """The tokens whose embeddings start the prompt (TEXT, SAMPLE_VOCAB), or None for RANDOM."""
    p = config.num_virtual_tokens
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        return torch.randint(0, vocab_size, (p,)).tolist()
    if config.prompt_tuning_init != "TEXT":
        return None
    tokenizer = config.tokenizer
    if tokenizer is None:
        kwargs = {k: v for k, v in (config.tokenizer_kwargs or {}).items() if k != "trust_remote_code"}
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    ids = tokenizer(config.prompt_tuning_init_text)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_tuning_init_text={config.prompt_tuning_init_text!r} gives no tokens.")
    return (ids * math.ceil(p / len(ids)))[:p]  # cut to p, or repeat until p


class PromptEmbedding(nn.Module):
    """peft's ``PromptEmbedding``: the soft prompt is the weight of ``embedding``, (p, d)."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: nn.Embedding):
        super().__init__()
        device = module_device(word_embeddings)
        self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim, device=device)
        ids = None if config.inference_mode else init_token_ids(config, word_embeddings.num_embeddings)
        if ids is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(word_embeddings(torch.tensor(ids, device=device)).float())

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)


@register_tuner
class PromptTuningTuner(Tuner):
    """Prepends the active adapter's prompt; P-tuning subclasses it and changes ``make_encoder``."""

    peft_type = "PROMPT_TUNING"
    is_prompt_learning = True

    def make_encoder(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return PromptEmbedding(config, word_embeddings)

    def inject(self, peft_model, config, adapter_name: str) -> None:
        model = peft_model.base_model
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("Prompt methods here support decoder-only causal LMs, not encoder-decoder models.")
        fill_from_model(config, model)
        if "prompt_encoder" not in peft_model._modules:
            peft_model.prompt_encoder = nn.ModuleDict()
        peft_model.prompt_encoder[adapter_name] = self.make_encoder(config, model.get_input_embeddings())

    def set_adapter(self, peft_model, names: list[str]) -> None:
        for name, encoder in peft_model.prompt_encoder.items():
            encoder.requires_grad_(name in names and not peft_model.peft_config[name].inference_mode)

    def delete_adapter(self, peft_model, name: str) -> None:
        del peft_model.prompt_encoder[name]

    def prompt(self, peft_model, adapter_name: str) -> torch.Tensor:
        """The soft prompt P of one adapter, (p, d), with its gradient."""
        encoder = peft_model.prompt_encoder[adapter_name]
        if peft_model.peft_config[adapter_name].inference_mode:
            return encoder.embedding.weight  # loaded for inference: the file's prompt itself
        ids = torch.arange(encoder.embedding.num_embeddings, device=encoder.embedding.weight.device)
        return encoder(ids.unsqueeze(0))[0]  # peft runs the encoder on a batch of one

    def named_adapter_tensors(self, peft_model, adapter_name: str) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": peft_model.prompt_encoder[adapter_name].embedding.weight}

    # ------------------------------------------------------------------ running
    def _prepare(self, peft_model, input_ids, inputs_embeds, attention_mask, position_ids, labels, kwargs):
        """The base model's arguments: prompt + embeddings, longer mask, shifted positions, -100 labels."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D (batch, seq), got shape {tuple(attention_mask.shape)}.")
        model, name = peft_model.base_model, peft_model.active_adapter
        if inputs_embeds is None:
            inputs_embeds = model.get_input_embeddings()(input_ids)
        batch = inputs_embeds.shape[0]
        p = peft_model.peft_config[name].num_virtual_tokens
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        continuing = cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0
        if not continuing:  # the cache, if any, is empty: this call reads the prompt
            prompt = self.prompt(peft_model, name).to(inputs_embeds.dtype)
            inputs_embeds = torch.cat([prompt.unsqueeze(0).expand(batch, -1, -1), inputs_embeds], dim=1)
            if labels is not None:
                labels = torch.cat([labels.new_full((batch, p), -100), labels], dim=1)  # no loss on P
        if position_ids is not None:
            before = torch.arange(p, device=position_ids.device).expand(batch, p)
            position_ids = position_ids + p if continuing else torch.cat([before, position_ids + p], dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(batch, p), attention_mask], dim=1)
            peftedu_positions = peft_model.peft_config[name].position_convention == "peftedu"
            if position_ids is None and peftedu_positions and "position_ids" in _arguments(model):
                position_ids = positions_from_mask(attention_mask)[:, -inputs_embeds.shape[1]:]
        extra = {"position_ids": position_ids} if position_ids is not None else {}
        return dict(kwargs, inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **extra)

    def forward(self, peft_model, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                position_ids=None, **kwargs):
        return peft_model.base_model(**self._prepare(peft_model, input_ids, inputs_embeds, attention_mask,
                                                     position_ids, labels, kwargs))

    def generate(self, peft_model, input_ids=None, attention_mask=None, **kwargs):
        """Greedy/sampled/beam generation after the soft prompt; returns input_ids + new tokens."""
        if input_ids is None:
            raise ValueError("generate needs input_ids (the prompt's real tokens).")
        for key in ("inputs_embeds", "position_ids", "cache", "past_key_values"):
            if kwargs.get(key) is not None:
                raise ValueError(f"generate with a soft prompt builds {key} itself; do not pass it.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if "max_length" in kwargs and "max_new_tokens" not in kwargs:  # peft counts real tokens only
            kwargs["max_new_tokens"] = kwargs.pop("max_length") - input_ids.shape[1]
        inputs = self._prepare(peft_model, input_ids, None, attention_mask, None, None, {})
        out = peft_model.base_model.generate(inputs_embeds=inputs["inputs_embeds"],
                                             attention_mask=inputs["attention_mask"], **kwargs)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        copies = sequences.shape[0] // input_ids.shape[0]  # num_return_sequences / beams
        sequences = torch.cat([input_ids.repeat_interleave(copies, dim=0), sequences], dim=1)
        if isinstance(out, torch.Tensor):
            return sequences
        out.sequences = sequences
        return out


def _arguments(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)
