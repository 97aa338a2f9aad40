"""Model shapes, read once for every notebook and tool.

* :func:`architecture` and :func:`decoder_layers` -- a model's shape read from its config under one set of
  names (Llama's ``num_key_value_heads``, BLOOM's ``n_head``, ...), and its list of decoder blocks, so a
  notebook derives its numbers and layer indices instead of assuming the default model's.
* :class:`DecoderShape` -- the handful of numbers that fix a LLaMA-style decoder's size, for models too big to
  build even on "meta": its exact parameter count, its LoRA parameter count for any rank and targets, and the
  order of its activation memory (:func:`activation_memory_gb`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn

from ..config import check_number


@dataclass(frozen=True)
class Architecture:
    """What a notebook needs to know about a decoder, under one set of names for every model type."""

    model_type: str
    n_layers: int
    hidden: int
    mlp_hidden: int  #: width of the MLP's hidden layer (Llama's intermediate_size, BLOOM's 4 x hidden)
    n_heads: int
    n_kv_heads: int  #: key/value heads (= n_heads without grouped-query attention)
    vocab: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of the keys (and of the values): n_kv_heads x head_dim."""
        return self.n_kv_heads * self.head_dim

    def describe(self) -> str:
        return (f"layers {self.n_layers}, hidden size {self.hidden}, MLP size {self.mlp_hidden}, "
                f"query heads {self.n_heads}, key/value heads {self.n_kv_heads}, "
                f"vocabulary {self.vocab:,}, tied embeddings {self.tied_embeddings}")


def architecture(model_or_config) -> Architecture:
    """The decoder's shape from a model or its config, whatever the model type calls each number.

    Raises ValueError naming the missing field when the config lacks one (e.g. an encoder-decoder config)."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()

    def get(what, *names, default=None):
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        if default is not None:
            return default
        raise ValueError(f"{type(config).__name__} (model_type {getattr(config, 'model_type', None)!r}) has no "
                         f"{what} (looked for {', '.join(names)}): peftedu.course.shapes.architecture reads decoder-only "
                         "causal LMs such as Llama, Qwen2, Mistral, BLOOM and GPT-2.")

    hidden = get("the hidden size", "hidden_size", "n_embd", "d_model")
    n_heads = get("the number of attention heads", "num_attention_heads", "n_head")
    return Architecture(
        model_type=str(getattr(config, "model_type", "")),
        n_layers=get("the number of layers", "num_hidden_layers", "n_layer", "num_layers"),
        hidden=hidden,
        mlp_hidden=get("the MLP width", "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        n_heads=n_heads,
        n_kv_heads=get("the key/value heads", "num_key_value_heads", default=n_heads),
        vocab=get("the vocabulary size", "vocab_size"),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (``model.layers`` of Llama/Qwen2, ``transformer.h`` of BLOOM/GPT-2):
    the first ``nn.ModuleList`` as long as the config's number of layers."""
    n_layers = architecture(model).n_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"{type(model).__name__} has no nn.ModuleList of {n_layers} decoder blocks "
                     "(its config's number of layers); pass a transformers causal LM.")


@dataclass(frozen=True)
class DecoderShape:
    """A LLaMA-style decoder (RMSNorm, SwiGLU MLP, no biases), enough to count its parameters.

    Per layer the linear maps (in -> out) are q_proj d->d, k_proj/v_proj d->kv, o_proj d->d,
    gate_proj/up_proj d->i, down_proj i->d, with kv = n_kv_heads * d / n_heads; plus two RMSNorm
    weights of size d. Around the layers: embeddings V x d, a final norm d, and ``lm_head`` d x V
    unless tied to the embeddings.
    """

    name: str
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    vocab: int
    n_kv_heads: int | None = None
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return (self.n_kv_heads or self.n_heads) * self.hidden // self.n_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{target name: (in_features, out_features)}`` of one decoder layer."""
        d, i, kv = self.hidden, self.intermediate, self.kv_dim
        return {
            "q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
            "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d),
        }

    def linear_params(self) -> int:
        """Weights of all linear layers inside the decoder blocks (what 4-bit quantization replaces)."""
        return self.n_layers * sum(a * b for a, b in self.linear_shapes().values())

    def n_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        norms = self.n_layers * 2 * self.hidden + self.hidden
        return self.linear_params() + embeddings + norms

    def lora_params(self, r: int, targets: Iterable[str] | str = "all-linear") -> int:
        """LoRA adds A (r x in) and B (out x r) to each targeted linear: r * (in + out) parameters."""
        shapes = self.linear_shapes()
        names = list(shapes) if targets == "all-linear" else list([targets] if isinstance(targets, str) else targets)
        unknown = [t for t in names if t not in shapes]
        if unknown:
            raise ValueError(f"Targets {unknown} are not linear layers of {self.name}; choose from {list(shapes)} or 'all-linear'.")
        check_number("r", r, integer=True)
        return self.n_layers * sum(r * sum(shapes[t]) for t in dict.fromkeys(names))

    @classmethod
    def from_config(cls, config, name: str | None = None, *, ignore_biases: bool = False) -> "DecoderShape":
        """From a transformers LLaMA-family config (LlamaConfig: TinyLlama, SmolLM2, ...).

        ``ignore_biases=True`` also takes Qwen2 (Llama's layout plus biases on q/k/v, which this shape leaves
        out: 0.01% of Qwen2.5-1.5B, nothing for a memory estimate; exact counts come from a meta-device model)."""
        allowed = ("llama", "mistral") + (("qwen2",) if ignore_biases else ())
        if getattr(config, "model_type", None) not in allowed:
            raise ValueError(
                f"DecoderShape describes bias-free LLaMA-style models; got model_type={getattr(config, 'model_type', None)!r}. "
                "Count other architectures on the meta device instead (peftedu.course.models.build_from_config)"
                + ("." if ignore_biases else ", or pass ignore_biases=True for a Qwen2 estimate.")
            )
        return cls(
            name=name or getattr(config, "name_or_path", "") or config.model_type,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
            vocab=config.vocab_size,
            n_kv_heads=config.num_key_value_heads,
            tied_embeddings=bool(config.tie_word_embeddings),
        )


#: The LLaMA sizes behind "7B / 13B / 33B / 65B / 70B" (Touvron et al. 2023a, Table 2; LLaMA-2-70B
#: with 8 key/value heads, Touvron et al. 2023b). "7B" is really 6.74B parameters -- not "13 billion",
#: as source 002 writes.
LLAMA_SHAPES: dict[str, DecoderShape] = {
    "7B": DecoderShape("LLaMA-7B", 4096, 11008, 32, 32, 32000),
    "13B": DecoderShape("LLaMA-13B", 5120, 13824, 40, 40, 32000),
    "33B": DecoderShape("LLaMA-33B", 6656, 17920, 60, 52, 32000),
    "65B": DecoderShape("LLaMA-65B", 8192, 22016, 80, 64, 32000),
    "70B": DecoderShape("LLaMA-2-70B", 8192, 28672, 80, 64, 32000, n_kv_heads=8),
}


def activation_memory_gb(
    shape: DecoderShape, *, batch_size: int, seq_len: int, checkpointing: bool = True, bits: float = 16
) -> float:
    """Approximate activation memory of one training step, in GB.

    Without recomputation a transformer layer keeps about ``s*b*h*(34 + 5*a*s/h)`` bytes of 16-bit
    activations (Korthikanti et al. 2022, Eq. 1; derived for a GPT layer with a 4h MLP -- LLaMA's
    SwiGLU MLP is of the same order). With gradient checkpointing (梯度检查点) only each layer's
    input ``b*s*h`` is kept, plus one layer's full activations while it is recomputed.
    This is an order-of-magnitude figure; measure with :func:`measure_peak_memory` when it matters.
    """
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}.")
    b, s, h, a = batch_size, seq_len, shape.hidden, shape.n_heads
    scale = bits / 16
    per_layer_full = s * b * h * (34 + 5 * a * s / h) * scale
    if checkpointing:
        total = shape.n_layers * b * s * h * bits / 8 + per_layer_full
    else:
        total = shape.n_layers * per_layer_full
    return total / 1e9  # GB = 10^9 bytes, the course's unit (peftedu.course.memory.GB)


__all__ = ["LLAMA_SHAPES", "Architecture", "DecoderShape", "activation_memory_gb", "architecture", "decoder_layers"]
