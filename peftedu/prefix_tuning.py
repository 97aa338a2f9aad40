"""Prefix tuning (前缀微调, Li & Liang 2021, arXiv:2101.00190): trainable keys and values in every layer.

Each attention layer l gets p extra key/value vectors that every real token can attend to, while the
queries, the weights and the tokens stay untouched::

    K'_l = [P_K,l ; K_l],  V'_l = [P_V,l ; V_l]              (T + p rows instead of T)
    head_i = softmax(Q_i K'_i^T / sqrt(d_h) + mask) V'_i     scores (N, h, T, T + p), output (N, h, T, d_h)

P-tuning v2 (Liu et al. 2021, arXiv:2110.07602) is this same method -- "deep prompts" in every layer,
no reparameterisation -- applied to understanding tasks: ``PrefixTuningConfig(prefix_projection=False)``.

**Parameters and shapes** (as HF peft's ``PrefixEncoder``). With L layers and ``token_dim = kv_heads *
head_dim`` (the key/value width: with grouped-query attention (GQA) the prefix has the *kv* heads, SmolLM2:
3 x 64 = 192, not 9 x 64 = 576):

* ``prefix_projection=False``: ``embedding`` = Embedding(p, L * 2 * token_dim), the prefix itself.
* ``prefix_projection=True`` (the paper's reparameterisation, more stable to train): Embedding(p, token_dim)
  -> Linear(token_dim, encoder_hidden_size) -> Tanh -> Linear(encoder_hidden_size, L * 2 * token_dim).
  ``encoder_hidden_size`` defaults to ``token_dim``.

Initialisation: N(0, 1) embeddings, default Linear init (peft's), or ``init_weights="zero"``; or a real
cache from text (:func:`prefix_from_text`, Li & Liang's initialisation, the one that trains well here).
Layout (peft's ``get_prompt``): the flat row of width L * 2 * token_dim is viewed as (2L, kv_heads, head_dim);
entry 2l is layer l's key, 2l + 1 its value, each (batch, kv_heads, p, head_dim) -- the cache layout.
Counts on bloom-1b4-zh (L = 24, token_dim 2048), p = 10: 983,040 without projection; with projection
20,480 + 4,196,352 + 201,424,896 = 205,641,728 trainable (the source tutorial's figures).

**How the prefix enters: the key/value cache.** A prefix is exactly what a model would have cached after
reading p tokens, so it is handed over as ``past_key_values``. Transformers first took these as tuples of
(key, value) tensors per layer (BLOOM with its own fused (batch*heads, d_h, p) key layout, which peft
re-shaped with a per-model "postprocess" function), then moved to ``Cache`` objects (``DynamicCache``,
peft issue #1962, "Transformers will no longer support `past_key_values` to be tuples"). That broke prefix
tuning several times: tuples had to be wrapped with ``DynamicCache.from_legacy_cache`` (peft #2096),
``key_cache`` attributes disappeared (peft #2737, #2821), ``_supports_cache_class`` was dropped (peft #2662),
BLOOM moved to the standard layout. In transformers 5.24 the argument is called ``cache`` (``past_key_values``
is a deprecated alias) and there is no ``from_legacy_cache``: a cache is built as
``DynamicCache([(key_0, value_0), ...], config=...)``, which is what :meth:`PrefixTuningTuner.prefix_cache` does.

**Positions (our convention).** The prefix holds no position: real tokens get positions 0..T-1 counted from
the attention mask (left padding respected: ``cumsum(mask) - 1``), in ``forward`` and in ``generate`` alike, so
``generate``'s first token is the argmax of ``forward``'s last logits and a left-padded batch generates what
each prompt generates alone. (Positions matter although RoPE is relative: the prefix keys are not rotated.)
The causal mask takes its offsets from the cache, and the prefix gets attention-mask ones.
HF peft 0.21.2 with transformers 5.24, as the tests check: peft adds p to any position ids it is given
(``_adjust_prompt_learning_kwargs``) and otherwise transformers counts from the cache length, so in
``forward`` real tokens sit at p..p+T-1 (parity tests therefore give peft ``position_ids - p``); its
``generate`` passes the prefix as ``past_key_values`` beside generate's own empty ``cache``, which wins, so the
prefix is silently dropped on Llama and a padded batch crashes on BLOOM. BLOOM (ALiBi) takes no position ids.
``PrefixTuningConfig(position_convention="peft")`` gives peft's forward positions instead (real tokens at
p..p+T-1, pads counted); an adapter file written by HF peft loads with it, so a peft-trained prefix gives peft's
forward logits here (``PeftModel.from_pretrained(..., position_convention=...)`` overrides; see
``config.POSITION_CONVENTIONS``). ``scripts/peft_generation_bug.py`` reproduces peft's generation bug.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn
from transformers import DynamicCache

from .config import PromptLearningConfig, check_number, register_config
from .tuners import Tuner, module_device, register_tuner


@register_config
@dataclasses.dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """peft's ``PrefixTuningConfig``. num_layers, token_dim (kv_heads × head_dim) and num_attention_heads (the key/value
    heads) are filled from the model; a prefix is L × 2 × p vectors of token_dim, one key and one value per layer."""

    peft_type = "PREFIX_TUNING"
    prefix_projection: bool = dataclasses.field(default=False, metadata={"help": (
        "True: Li & Liang's reparameterisation, the prefix made by an MLP (Embedding(p, token_dim) -> Linear -> Tanh "
        "-> Linear), more stable to train. False (default): the prefix itself is trained (P-tuning v2, Liu et al. "
        "2021).")})
    encoder_hidden_size: int | None = dataclasses.field(default=None, metadata={"help": (
        "The hidden width of the prefix_projection MLP (unused without it). A positive integer; default None: "
        "token_dim, filled in when the adapter is added.")})
    init_weights: str | None = dataclasses.field(default=None, metadata={"help": (
        "How the prefix parameters start: None (default) random (N(0, 1) embeddings, default Linear init, as peft), "
        "or 'zero' (peft's option: the prefix starts as a no-op).")})

    def __post_init__(self):
        super().__post_init__()
        if self.encoder_hidden_size is not None:
            check_number("encoder_hidden_size", self.encoder_hidden_size, integer=True)
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"init_weights must be None (random) or 'zero', got {self.init_weights!r}.")


def prefix_geometry(model_config) -> dict[str, int]:
    """num_layers, kv heads, head_dim and ``token_dim = kv_heads * head_dim`` of a transformers config."""
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)
    num_layers, heads, hidden = get("num_hidden_layers", "n_layer"), get("num_attention_heads", "n_head"), \
        get("hidden_size", "n_embd")
    if None in (num_layers, heads, hidden):
        raise ValueError(f"Cannot read num_layers/num_attention_heads/hidden_size from {type(config).__name__}; "
                         "prefix tuning needs a decoder config that names them.")
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or hidden // heads
    return {"num_layers": num_layers, "num_kv_heads": kv_heads, "head_dim": head_dim, "token_dim": kv_heads * head_dim}


def prefix_key_values(flat: torch.Tensor, num_layers: int, num_kv_heads: int, head_dim: int, batch: int):
    """(p, L * 2 * kv_heads * head_dim) -> per layer (key, value), each (batch, kv_heads, p, head_dim)."""
    p = flat.shape[0]
    per_entry = flat.view(p, num_layers * 2, num_kv_heads, head_dim).permute(1, 2, 0, 3)  # (2L, h_kv, p, d_h)
    per_entry = per_entry.unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (2L, batch, h_kv, p, d_h)
    return [(per_entry[2 * layer], per_entry[2 * layer + 1]) for layer in range(num_layers)]


@torch.no_grad()
def prefix_from_text(model: nn.Module, tokenizer, text: str, num_virtual_tokens: int) -> torch.Tensor:
    """Li & Liang's initialisation: the key/value cache of the first ``p`` tokens of ``text``, as a flat prefix.

    A prefix *is* a cache, so a real one -- what the frozen model computes while reading task-like words --
    is a prefix that starts near the base model's loss (peft's N(0, 1) prefix starts far above it; notebook
    04 measures both). The text runs at positions -p..-1, just before the real tokens at 0..T-1. Returns
    (p, L * 2 * token_dim) in peft's layout, the inverse of :func:`prefix_key_values`; copy it into
    ``peft_model.prompt_encoder[name].embedding.weight`` (prefix tuning without projection).
    """
    ids = tokenizer(text)["input_ids"]
    if len(ids) < num_virtual_tokens:
        raise ValueError(f"The init text has {len(ids)} tokens; num_virtual_tokens={num_virtual_tokens} needs at "
                         "least that many. Use a longer text or fewer virtual tokens.")
    ids = torch.tensor([ids[:num_virtual_tokens]], device=module_device(model))
    kwargs = {"use_cache": True}
    if "position_ids" in inspect.signature(model.forward).parameters:
        kwargs["position_ids"] = torch.arange(-num_virtual_tokens, 0, device=ids.device)[None]
    out = model(input_ids=ids, **kwargs)
    cache = getattr(out, "cache", None) or out.past_key_values
    per_entry = torch.stack([t for layer in cache.layers for t in (layer.keys[0], layer.values[0])])  # (2L,h,p,d)
    return per_entry.permute(2, 0, 1, 3).reshape(num_virtual_tokens, -1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0..T-1 of the real tokens, left padding skipped (what ``generate`` computes)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def cache_argument(model: nn.Module) -> str:
    """Name under which ``model.forward`` takes a key/value cache, or a ValueError if it takes none."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise ValueError(f"{type(model).__name__}.forward takes no key/value cache (no 'cache' or 'past_key_values' "
                     "argument), so prefix tuning cannot hand it a prefix. Use prompt tuning (which changes the "
                     "input embeddings) or a decoder model with a cache, e.g. a Llama or BLOOM model.")


class PrefixEncoder(nn.Module):
    """peft's ``PrefixEncoder``: ``forward()`` gives the flat prefix, (p, L * 2 * token_dim)."""

    def __init__(self, config: PrefixTuningConfig, device=None):
        super().__init__()
        p, width = config.num_virtual_tokens, config.num_layers * 2 * config.token_dim
        self.transform = None
        if config.prefix_projection and not config.inference_mode:  # loaded for inference: the projected prefix
            self.embedding = nn.Embedding(p, config.token_dim, device=device)
            self.transform = nn.Sequential(nn.Linear(config.token_dim, config.encoder_hidden_size, device=device),
                                           nn.Tanh(), nn.Linear(config.encoder_hidden_size, width, device=device))
            if config.init_weights == "zero":
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = nn.Embedding(p, width, device=device)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def forward(self) -> torch.Tensor:
        weight = self.embedding.weight
        return weight if self.transform is None else self.transform(weight)


@register_tuner
class PrefixTuningTuner(Tuner):
    peft_type = "PREFIX_TUNING"

    def inject(self, peft_model, config: PrefixTuningConfig, adapter_name: str) -> None:
        model = peft_model.base_model
        cache_argument(model)
        if getattr(model.config, "is_encoder_decoder", False):
            raise ValueError("Prefix tuning here supports decoder-only causal LMs, not encoder-decoder models.")
        geometry = prefix_geometry(model.config)
        geometry["num_attention_heads"] = geometry["num_kv_heads"]  # peft stores the kv heads there
        for field in ("num_layers", "token_dim", "num_attention_heads"):
            if getattr(config, field) is None:
                setattr(config, field, geometry[field])
            elif getattr(config, field) != geometry[field]:
                raise ValueError(f"{field}={getattr(config, field)} in the config, but this model has "
                                 f"{geometry[field]}: the adapter was made for another architecture.")
        if config.encoder_hidden_size is None:
            config.encoder_hidden_size = config.token_dim
        if "prompt_encoder" not in peft_model._modules:
            peft_model.prompt_encoder = nn.ModuleDict()
        peft_model.prompt_encoder[adapter_name] = PrefixEncoder(config, device=module_device(model))

    def set_adapter(self, peft_model, names: list[str]) -> None:
        for name, encoder in peft_model.prompt_encoder.items():
            encoder.requires_grad_(name in names)

    def delete_adapter(self, peft_model, name: str) -> None:
        del peft_model.prompt_encoder[name]

    def named_adapter_tensors(self, peft_model, adapter_name: str) -> dict[str, torch.Tensor]:
        """peft's file holds one tensor, ``prompt_embeddings`` (p, L * 2 * token_dim): the prefix itself --
        with projection the MLP's *output*, so a saved projected adapter loads for inference only."""
        encoder = peft_model.prompt_encoder[adapter_name]
        if encoder.transform is None:
            return {"prompt_embeddings": encoder.embedding.weight}
        return {"prompt_embeddings": encoder().detach()}

    def translate_loaded_state(self, peft_model, state: dict, adapter_name: str) -> dict:
        if peft_model.prompt_encoder[adapter_name].transform is not None:
            raise ValueError("The file holds the projected prefix, which cannot be turned back into the "
                             "projection MLP's weights (peft refuses too). Load it with is_trainable=False.")
        return state

    # ------------------------------------------------------------------ running
    def prefix_cache(self, peft_model, batch: int, adapter_name: str | None = None):
        """A fresh ``DynamicCache`` holding the prefix keys/values of every layer for ``batch`` rows."""
        adapter_name = adapter_name or peft_model.active_adapter
        config, model = peft_model.peft_config[adapter_name], peft_model.base_model
        flat = peft_model.prompt_encoder[adapter_name]().to(model.dtype)
        geometry = prefix_geometry(model.config)
        pairs = prefix_key_values(flat, config.num_layers, geometry["num_kv_heads"], geometry["head_dim"], batch)
        return DynamicCache(pairs, config=model.config)

    def _prepare(self, peft_model, tokens, attention_mask, kwargs, batch: int) -> dict:
        """Shared by forward and generate: prefix-extended mask, positions 0..T-1, the cache."""
        model = peft_model.base_model
        for name in ("cache", "past_key_values"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"Prefix tuning fills the key/value cache itself; do not pass {name}=.")
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        config = peft_model.peft_config[peft_model.active_adapter]
        if (config.position_convention == "peftedu" and kwargs.get("position_ids") is None
                and "position_ids" in inspect.signature(model.forward).parameters):
            kwargs["position_ids"] = positions_from_mask(attention_mask)  # else the model counts from the cache: p..
        p = config.num_virtual_tokens
        prefix_mask = torch.ones(attention_mask.shape[0], p, dtype=attention_mask.dtype, device=attention_mask.device)
        kwargs["attention_mask"] = torch.cat([prefix_mask, attention_mask], dim=1)
        kwargs[cache_argument(model)] = self.prefix_cache(peft_model, batch)
        return kwargs

    def forward(self, peft_model, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is None:
            raise ValueError("Pass input_ids or inputs_embeds.")
        kwargs = self._prepare(peft_model, tokens, attention_mask, kwargs, batch=tokens.shape[0])
        return peft_model.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)

    def generate(self, peft_model, input_ids=None, attention_mask=None, **kwargs):
        """``generate`` starting from a cache that already holds the prefix (a "continuation" from the
        library's point of view: the mask covers p + T tokens, the cache p, the input_ids T)."""
        if input_ids is None:
            raise ValueError("Prefix tuning's generate needs input_ids (the prompt).")
        if kwargs.get("use_cache") is False:
            raise ValueError("Prefix tuning lives in the key/value cache; generate with use_cache=True.")
        generation_config = kwargs.get("generation_config") or peft_model.base_model.generation_config
        copies = max(kwargs.get("num_beams") or generation_config.num_beams or 1,  # rows generate makes
                     kwargs.get("num_return_sequences") or generation_config.num_return_sequences or 1)
        kwargs = self._prepare(peft_model, input_ids, attention_mask, kwargs, batch=input_ids.shape[0] * copies)
        return peft_model.base_model.generate(input_ids=input_ids, **kwargs)
