"""Model shapes: exact parameter and LoRA counts for models too big to build, even on "meta".

A :class:`DecoderShape` is the handful of numbers that fix a LLaMA-style decoder's size; from it come its
parameter count, its LoRA parameter count for any rank and targets, and the order of its activation memory.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        if not (isinstance(r, int) and r > 0):
            raise ValueError(f"LoRA rank r must be a positive int, got {r!r}.")
        return self.n_layers * sum(r * sum(shapes[t]) for t in dict.fromkeys(names))

    @classmethod
    def from_config(cls, config, name: str | None = None) -> "DecoderShape":
        """From a transformers LLaMA-family config (LlamaConfig: TinyLlama, SmolLM2, ...)."""
        if getattr(config, "model_type", None) not in ("llama", "mistral"):
            raise ValueError(
                f"DecoderShape describes bias-free LLaMA-style models; got model_type={getattr(config, 'model_type', None)!r}. "
                "Count other architectures on the meta device instead (peftedu.course.models.build_from_config)."
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


__all__ = ["LLAMA_SHAPES", "DecoderShape", "activation_memory_gb"]
