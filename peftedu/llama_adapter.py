"""LLaMA-Adapter (Zhang et al. 2023, arXiv:2303.16199): learnable adaption prompts (适配提示) in the top layers,
let in through a zero-initialised gate (零初始化注意力, "zero-init attention").

In each of the top ``adapter_layers`` attention layers, a learned prompt ``P_l`` (adapter_len x hidden) is
projected by the layer's own frozen k_proj / v_proj and attended to *separately* from the real tokens; the
result is scaled by a gate ``g_l`` that starts at zero (the paper's Eq. 8, separate softmaxes)::

    S_P = Q K_P^T / sqrt(d_h),   K_P = P_l W_k^T,  V_P = P_l W_v^T          scores (N, h, T, adapter_len)
    out = attention(x) + W_o [ g_l * softmax(S_P) V_P ]                      (N, T, hidden)

Q is the layer's query with its rotary embedding (the positions of the real tokens); the prompt keys
get no rotary embedding and no attention mask (every token, pads included, sees the prompt).
With grouped-query attention (SmolLM2: 9 query heads, 3 kv heads) K_P and V_P have the kv heads and are
repeated to the query heads, as the model does with its own keys.

Initialisation (as peft): ``adaption_prompt`` ~ N(0, 1), shape (1, adapter_len, hidden);
``adaption_gate`` = 0, shape (1). With g = 0 the model is exactly the base model at step 0, yet the
gradient reaches the gate (d out / d g = W_o softmax(S_P) V_P != 0) and, once g moves, the prompt.
Trainable parameters: adapter_layers * (adapter_len * hidden + 1) -- SmolLM2-135M, adapter_len 10, 8 layers:
8 * (10 * 576 + 1) = 46,088.

Matches HF peft's ``AdaptedAttention`` (peft/tuners/adaption_prompt/layer.py; it works with transformers
5.24 on Llama), same parameter and file names (``...self_attn.adaption_prompt`` / ``adaption_gate``), with two
deliberate differences that only matter outside Llama-style models: the kv heads are read as
``k_proj.out_features // head_dim`` (peft divides in by out features), and an o_proj *bias* is not added a
second time (peft's ``o_proj(adapter_output)`` adds it again; Llama's o_proj has none). Supported: attention
modules with q_proj, k_proj, v_proj, o_proj and rotary ``position_embeddings`` (Llama, Mistral, Qwen2);
BLOOM's fused ``query_key_value`` is rejected with a ValueError.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .config import PeftConfig, check_number, register_config
from .tuners import AdapterLayer, Tuner, candidate_layers, matches_name, module_device, register_tuner


@register_config
@dataclasses.dataclass
class AdaptionPromptConfig(PeftConfig):
    """peft's ``AdaptionPromptConfig``: adapter_len prompt tokens in each of the top adapter_layers layers."""

    peft_type = "ADAPTION_PROMPT"
    target_modules: str | None = dataclasses.field(default="self_attn", metadata={"help": (
        "The name of the attention submodules that get adaption prompts (peft's meaning). A string; default "
        "'self_attn' (Llama, Mistral, Qwen2); None is read as 'self_attn'.")})
    adapter_len: int | None = dataclasses.field(default=None, metadata={"help": (
        "The adaption prompt length K (Zhang et al. 2023, LLaMA-Adapter): learned prompt vectors per adapted layer. "
        "Required: a positive integer (the default None is an error).")})
    adapter_layers: int | None = dataclasses.field(default=None, metadata={"help": (
        "The number L of top attention layers that get an adaption prompt and a zero-initialised gate (Zhang et al. "
        "2023). Required: a positive integer, at most the model's layer count.")})

    def __post_init__(self):
        super().__post_init__()
        check_number("adapter_len", self.adapter_len, integer=True)
        check_number("adapter_layers", self.adapter_layers, integer=True)
        if self.target_modules is None:
            self.target_modules = "self_attn"
        if not isinstance(self.target_modules, str):
            raise ValueError(f"target_modules is the attention module's name, e.g. 'self_attn'; got "
                             f"{self.target_modules!r}.")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class AdaptedAttention(AdapterLayer):
    """A Llama-style attention module plus one gated adaption prompt per adapter name."""

    adapter_attributes = ("adaption_prompt", "adaption_gate")

    def __init__(self, base_layer: nn.Module):
        missing = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim") if not hasattr(base_layer, n)]
        if missing:
            raise ValueError(f"LLaMA-Adapter needs Llama-style attention (q_proj, k_proj, v_proj, o_proj, "
                             f"head_dim); {type(base_layer).__name__} lacks {missing}. peft supports llama and "
                             "mistral (and gpt2); a fused query_key_value (BLOOM) is not supported.")
        super().__init__(base_layer)
        self.adaption_prompt, self.adaption_gate = nn.ParameterDict(), nn.ParameterDict()

    def add(self, adapter_name: str, config: AdaptionPromptConfig) -> None:
        base, device = self.base_layer, module_device(self.base_layer)
        dtype = base.q_proj.weight.dtype if base.q_proj.weight.is_floating_point() else torch.float32
        prompt = torch.empty(1, config.adapter_len, base.q_proj.in_features, device=device, dtype=dtype)
        if device.type != "meta":
            prompt.normal_()
        self.adaption_prompt[adapter_name] = nn.Parameter(prompt)
        self.adaption_gate[adapter_name] = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def adapter_output(self, adapter_name: str, hidden_states: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor) -> torch.Tensor:
        """W_o [g * softmax(Q K_P^T / sqrt(d_h)) V_P]: what the adapter adds, (N, T, hidden)."""
        attn, prompt = self.base_layer, self.adaption_prompt[adapter_name]
        batch, seq_len, _ = hidden_states.shape
        head_dim, adapter_len = attn.head_dim, prompt.shape[1]
        heads, kv_heads = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
        key = attn.k_proj(prompt).view(1, adapter_len, kv_heads, head_dim).transpose(1, 2)  # (1, h_kv, L, d_h)
        value = attn.v_proj(prompt).view(1, adapter_len, kv_heads, head_dim).transpose(1, 2)
        key = key.repeat_interleave(heads // kv_heads, dim=1)  # GQA: (1, h, L, d_h)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
        query = attn.q_proj(hidden_states).view(batch, seq_len, heads, head_dim).transpose(1, 2)  # (N, h, T, d_h)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        query = query * cos + rotate_half(query) * sin
        scores = query @ key.transpose(2, 3).to(query.dtype) / math.sqrt(head_dim)  # (N, h, T, L)
        probs = self.adaption_gate[adapter_name] * torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        mixed = (probs @ value).transpose(1, 2).reshape(batch, seq_len, heads * head_dim)
        out = attn.o_proj(mixed)
        bias = getattr(attn.o_proj, "bias", None)
        return out - bias if bias is not None else out  # o_proj's bias is in the base output already

    def forward(self, *args, **kwargs):
        output, *rest = self.base_layer(*args, **kwargs)
        if self.disabled or not (self.active_adapters or self.row_adapters):
            return (output, *rest)
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        position_embeddings = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        if position_embeddings is None:
            raise ValueError("LLaMA-Adapter needs the rotary position_embeddings (cos, sin) the model passes to "
                             "its attention; this model passed none.")
        cos, sin = position_embeddings
        if self.row_adapters is not None:  # mixed batch: each row its own adapter
            output = output.clone()
            for name in dict.fromkeys(self.row_adapters):
                if name not in self.adaption_prompt:
                    continue
                rows = [i for i, n in enumerate(self.row_adapters) if n == name]
                pick = (lambda t: t if t.shape[0] == 1 else t[rows])
                extra = self.adapter_output(name, hidden_states[rows], pick(cos), pick(sin))
                output[rows] = output[rows] + extra.to(output.dtype)
            return (output, *rest)
        for name in self.active_adapters:
            output = output + self.adapter_output(name, hidden_states, cos, sin).to(output.dtype)
        return (output, *rest)


@register_tuner
class AdaptionPromptTuner(Tuner):
    peft_type = "ADAPTION_PROMPT"

    layer_class = AdaptedAttention

    def target_names(self, model: nn.Module, config: AdaptionPromptConfig) -> list[str]:
        """The top ``adapter_layers`` attention modules named ``target_modules``, as in the paper."""
        names = [n for n in candidate_layers(model, (nn.Module,)) if matches_name(n, config.target_modules)]
        if not names:
            raise ValueError(f"target_modules={config.target_modules!r} matches no module of "
                             f"{type(model).__name__}; LLaMA-Adapter wraps Llama-style attention modules "
                             "('self_attn' in Llama, Mistral, Qwen2): separate q/k/v/o projections and rotary "
                             "positions. A fused query_key_value with ALiBi positions (BLOOM) does not fit it.")
        if len(names) < config.adapter_layers:
            raise ValueError(f"adapter_layers={config.adapter_layers} but the model has only {len(names)} "
                             f"'{config.target_modules}' layers; pick at most {len(names)}.")
        return names[-config.adapter_layers:]
