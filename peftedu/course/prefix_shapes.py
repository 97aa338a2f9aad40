"""Prefix tuning, one tensor at a time: every shape on the way from x to the attention output.

:func:`prefix_shape_walkthrough` runs real tensors through the first attention layer of a model (or of an
architecture built on the meta device, where tensors have shapes but no values) and records each step as
``(name, shape, explanation)``, asserting the shape the equations predict. With N = batch, T = tokens,
p = prefix length, h query heads, h_kv key/value heads (h_kv < h with grouped-query attention), d_h per
head and L layers::

    Q (N, h, T, d_h)   K, V (N, h_kv, T, d_h)          the layer's own projections of x (N, T, d_model)
    prefix parameter (p, L * 2 * h_kv * d_h)           peft's PrefixEncoder.embedding, no projection
    P_K, P_V of layer l (N, h_kv, p, d_h)              the reshape of prefix_tuning.prefix_key_values
    K' = [P_K; K], V' = [P_V; V] (N, h_kv, p + T, d_h) what the key/value cache's update returns
    A = softmax(Q K'^T / sqrt(d_h)) (N, h, T, p + T)   every token sees the whole prefix, causal on tokens
    O = A V' (N, h, T, d_h) -> (N, T, h * d_h) -> o_proj -> (N, T, d_model)

Rotary embeddings are left out (they change values, not shapes). :func:`prefix_shape_explorer` wraps the
walkthrough in ipywidgets sliders (p, T, batch) and an architecture dropdown (a monospace table; in a static
rendering, the default setting's table and a note that the controls need a kernel).
"""

from __future__ import annotations

import html
import math
from typing import NamedTuple

import ipywidgets as widgets
import torch
from torch import nn
from transformers import DynamicCache

from ..config import check_number
from .explorers import LIVE_NOTE
from .models import SHIPPED_ARCHITECTURES, as_model
from .shapes import architecture
from ..prefix_tuning import PrefixEncoder, PrefixTuningConfig, prefix_geometry, prefix_key_values
from ..tuners import module_device, module_dtype

class Step(NamedTuple):
    name: str
    shape: tuple[int, ...]
    explanation: str


def _is_attention(module: nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or \
        (hasattr(module, "query_key_value") and hasattr(module, "dense"))


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention module of every layer, in order: Llama/Qwen2's ``self_attn`` (``q_proj`` ... ``o_proj``)
    or BLOOM's ``self_attention`` (fused ``query_key_value``, ``dense``). A ValueError names what is missing."""
    found = [module for module in model.modules() if _is_attention(module)]
    if not found:
        raise ValueError(f"No attention layer found in {type(model).__name__}: expected modules with "
                         "q_proj/k_proj/v_proj/o_proj (Llama, Qwen2) or query_key_value/dense (BLOOM).")
    return found


def attention_projections(attention: nn.Module):
    """(q, k, v, out) of one attention module: q/k/v map x (N, T, d_model) to (N, T, heads * d_h); ``out`` is
    the output projection module (``o_proj``, BLOOM's ``dense``). BLOOM's fused ``query_key_value`` is laid out
    per head as ``[q | k | v]`` and is split accordingly (what its ``_reshape`` does)."""
    if not _is_attention(attention):
        raise ValueError(f"{type(attention).__name__} is not an attention module with q_proj/k_proj/v_proj/o_proj "
                         "or query_key_value/dense; pass one of attention_layers(model).")
    if hasattr(attention, "q_proj"):
        return attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
    fused, heads = attention.query_key_value, attention.num_heads  # BLOOM: (N, T, h * 3 * d_h)
    split = lambda x, i: fused(x).view(*x.shape[:2], heads, 3, -1)[..., i, :].flatten(2)
    return (lambda x: split(x, 0)), (lambda x: split(x, 1)), (lambda x: split(x, 2)), attention.dense


def _first_attention(model: nn.Module):
    """(q, k, v, out) callables of the first attention layer: Llama-style or BLOOM's fused projection."""
    return attention_projections(attention_layers(model)[0])


def prefix_shape_walkthrough(model_or_config, batch: int = 2, seq_len: int = 5,
                             num_virtual_tokens: int = 4) -> list[Step]:
    """The ordered steps of one prefix-tuned attention layer, each shape checked with an ``assert``."""
    for name, value in (("batch", batch), ("seq_len", seq_len), ("num_virtual_tokens", num_virtual_tokens)):
        check_number(name, value, integer=True)
    model = as_model(model_or_config)
    geometry = prefix_geometry(model.config)
    L, h_kv, d_h = geometry["num_layers"], geometry["num_kv_heads"], geometry["head_dim"]
    shape = architecture(model)
    h, d_model = shape.n_heads, shape.hidden
    N, T, p = batch, seq_len, num_virtual_tokens
    device, dtype = module_device(model), module_dtype(model)
    q_proj, k_proj, v_proj, out_proj = _first_attention(model)
    steps: list[Step] = []

    def record(name, tensor, expected, explanation):
        assert tuple(tensor.shape) == tuple(expected), f"{name}: got {tuple(tensor.shape)}, expected {expected}"
        steps.append(Step(name, tuple(tensor.shape), explanation))

    x = torch.randn(N, T, d_model, device=device, dtype=dtype)
    record("x", x, (N, T, d_model), "hidden states entering attention: batch N, T tokens, d_model")
    heads_view = lambda t, n: t.view(N, T, n, d_h).transpose(1, 2)
    q, k, v = heads_view(q_proj(x), h), heads_view(k_proj(x), h_kv), heads_view(v_proj(x), h_kv)
    record("Q", q, (N, h, T, d_h), f"queries, {h} heads of d_h = {d_h}; prefix tuning leaves them alone")
    record("K", k, (N, h_kv, T, d_h), f"keys of the real tokens, {h_kv} key/value heads")
    record("V", v, (N, h_kv, T, d_h), "values of the real tokens")
    prefix_config = PrefixTuningConfig(num_virtual_tokens=p, num_layers=L, token_dim=h_kv * d_h,
                                       num_attention_heads=h_kv, encoder_hidden_size=h_kv * d_h)
    flat = PrefixEncoder(prefix_config, device=device)()
    record("prefix parameter", flat, (p, L * 2 * h_kv * d_h),
           f"one trainable row per virtual token: L={L} layers x (key, value) x {h_kv} heads x {d_h} "
           f"= {flat.shape[1]:,}; {flat.numel():,} parameters in all")
    key_values = prefix_key_values(flat.to(dtype), L, h_kv, d_h, N)
    record("P_K (layer 0)", key_values[0][0], (N, h_kv, p, d_h), "row viewed as (2L, h_kv, d_h); entry 2l is "
           "layer l's key, expanded over the batch (every row gets the same prefix)")
    record("P_V (layer 0)", key_values[0][1], (N, h_kv, p, d_h), "entry 2l + 1 is layer l's value")
    cache = DynamicCache(key_values)
    k_all, v_all = cache.update(k, v, 0)  # exactly what the attention layer calls
    record("K' = [P_K; K]", k_all, (N, h_kv, p + T, d_h), "the cache prepends the prefix: p + T keys")
    record("V' = [P_V; V]", v_all, (N, h_kv, p + T, d_h), "and p + T values")
    if h != h_kv:
        k_all, v_all = k_all.repeat_interleave(h // h_kv, 1), v_all.repeat_interleave(h // h_kv, 1)
        record("K' per query head", k_all, (N, h, p + T, d_h),
               f"grouped-query attention: each key/value head serves {h // h_kv} query heads")
    scores = q @ k_all.transpose(-1, -2) / math.sqrt(d_h)
    record("scores", scores, (N, h, T, p + T), "Q K'^T / sqrt(d_h): each token scores p prefix + T token keys")
    rows, cols = torch.arange(T, device=device)[:, None], torch.arange(p + T, device=device)[None, :]
    allowed = (cols < p) | (cols - p <= rows)  # the whole prefix, then causal over the real tokens
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    record("A", weights, (N, h, T, p + T), "softmax over the p + T keys (future tokens masked, prefix never)")
    if device.type != "meta":
        assert torch.allclose(weights.sum(-1), torch.ones((), dtype=weights.dtype)), "rows of A must sum to 1"
    out = weights @ v_all
    record("O = A V'", out, (N, h, T, d_h), "one mixed value per token and head: the prefix adds no output rows")
    merged = out.transpose(1, 2).reshape(N, T, h * d_h)
    record("heads merged", merged, (N, T, h * d_h), "heads side by side")
    record("output", out_proj(merged), (N, T, d_model), "the output projection: back to d_model")
    return steps


def format_walkthrough(steps: list[Step]) -> str:
    width = max(len(s.name) for s in steps)
    return "\n".join(f"{s.name:<{width}}  {str(s.shape):<24}  {s.explanation}" for s in steps)


STATIC_NOTE = LIVE_NOTE  # the course's one wording for every explorer's static view


def _explorer_text(name: str, batch: int, seq_len: int, num_virtual_tokens: int) -> str:
    """The explorer's text for one setting: a header line and the walkthrough table."""
    steps = prefix_shape_walkthrough(name, batch, seq_len, num_virtual_tokens)
    return f"{name}: N={batch}, T={seq_len}, p={num_virtual_tokens}\n{format_walkthrough(steps)}"


def _preformatted(text: str) -> str:
    """Monospace HTML that never wraps a line (a wide table scrolls sideways instead of breaking words)."""
    return ('<pre style="white-space: pre; word-break: normal; overflow-wrap: normal; overflow-x: auto; '
            f'font-family: monospace; font-size: 12px; line-height: 1.35; margin: 0">{html.escape(text)}</pre>')


def prefix_shape_explorer(architectures=SHIPPED_ARCHITECTURES, num_virtual_tokens: int = 4, seq_len: int = 5,
                          batch: int = 2):
    """Sliders for p, T and batch plus an architecture dropdown; shows :func:`prefix_shape_walkthrough` as a
    monospace table that never wraps mid-word. Returns an ipywidgets ``VBox`` (builds headless; architectures
    are built on the meta device): ``children[0]`` holds the controls, ``children[1]`` the table (an ``HTML``
    widget). Where no kernel runs (a static rendering of the notebook), it shows the table for the default
    setting and :data:`STATIC_NOTE` instead of the controls."""
    architectures = list(architectures)
    style, layout = {"description_width": "initial"}, widgets.Layout(width="auto")
    arch = widgets.Dropdown(options=architectures, value=architectures[0], description="model", style=style,
                            layout=layout)
    p = widgets.IntSlider(value=num_virtual_tokens, min=1, max=64, description="p (prefix)", style=style)
    t = widgets.IntSlider(value=seq_len, min=1, max=64, description="T (tokens)", style=style)
    n = widgets.IntSlider(value=batch, min=1, max=8, description="N (batch)", style=style)
    table = widgets.HTML(layout=widgets.Layout(width="100%", overflow="auto"))
    static_text = _explorer_text(arch.value, n.value, t.value, p.value)

    def update(_change=None):
        table.value = _preformatted(_explorer_text(arch.value, n.value, t.value, p.value))

    for control in (arch, p, t, n):
        control.observe(update, names="value")
    update()

    class ShapeExplorer(widgets.VBox):
        """The widget in a live notebook; a readable table (text/plain, text/html) in a static one."""

        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs) or {}
            bundle = dict(bundle) if isinstance(bundle, dict) else {}
            bundle["text/plain"] = f"{static_text}\n{STATIC_NOTE}"
            bundle["text/html"] = _preformatted(static_text) + f"<p><i>{STATIC_NOTE}</i></p>"
            return bundle

    controls = widgets.HBox([arch, p, t, n], layout=widgets.Layout(flex_flow="row wrap"))
    return ShapeExplorer([controls, table])
