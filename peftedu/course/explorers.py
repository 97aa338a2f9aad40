"""Interactive explorers: LoRA rank -> parameters and memory; model size x method -> memory.

Every explorer is two layers: plain functions that compute (unit-tested, usable without any
widget) and a thin ipywidgets wrapper that only wires controls to them. Building a widget needs
no front-end, so notebooks run headless under ``pytest --nbval``; the controls simply do nothing
until a browser shows them.

* :func:`lora_parameter_count` -- LoRA (低秩适配) adds ``A: r x in`` and ``B: out x r`` to every
  targeted ``nn.Linear``, i.e. ``r * (in + out)`` trainable parameters per module. Targets are
  matched as in HF peft: a list of names matches a module whose name equals an entry or ends with
  ``"." + entry``; ``"all-linear"`` means every ``nn.Linear`` except the output layer; any other
  string is a regular expression that must match the whole module name.
* :func:`lora_memory` / :func:`memory_estimates` -- the memory those counts imply, through
  :func:`peftedu.course.memory.estimate_training_memory`.
* :func:`lora_rank_explorer` and :func:`memory_explorer` -- the widgets. Where widgets cannot render (a saved
  notebook opened without a kernel, GitHub), a cell would show only the widget's text form, so each explorer also
  shows its default state as plain output -- the text and the figure -- followed by :data:`LIVE_NOTE`, and its
  text form names it instead of listing its children.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from torch import nn

from ..config import check_number
from ..counting import count_parameters, format_trainable_parameters
from ..tuners import find_target_modules
from .memory import MemoryEstimate
from .recipes import METHODS, method_memory
from .models import SHIPPED_ARCHITECTURES, as_model
from .shapes import LLAMA_SHAPES, DecoderShape

RANK_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def linear_suffixes(model_or_name: nn.Module | str) -> list[str]:
    """Last name component of every ``nn.Linear`` except the output layer, in model order
    (``["q_proj", "k_proj", ...]`` for LLaMA, ``["query_key_value", "dense", ...]`` for BLOOM)."""
    names = find_target_modules(as_model(model_or_name), "all-linear", allowed_types=(nn.Linear,))
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))


def match_target_modules(model: nn.Module, target_modules: Iterable[str] | str) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules LoRA would wrap, by name: the library's matcher
    (:func:`peftedu.tuners.find_target_modules`, peft's rules), whose errors name what exists."""
    names = find_target_modules(model, target_modules, allowed_types=(nn.Linear,))
    return {name: model.get_submodule(name) for name in names}


@dataclass(frozen=True)
class LoraParameterCount:
    """What LoRA of rank ``rank`` adds to a model (counts as HF peft reports them)."""

    rank: int
    lora_params: int  #: trainable: sum of r * (in + out)
    base_params: int  #: the frozen model
    n_modules: int  #: wrapped nn.Linear modules
    by_target: dict[str, int] = field(default_factory=dict)  #: LoRA params per target suffix

    @property
    def total_params(self) -> int:
        return self.base_params + self.lora_params

    def __str__(self) -> str:
        return format_trainable_parameters((self.lora_params, self.total_params))


def lora_parameter_count(
    model_or_name: nn.Module | str, r: int, target_modules: Iterable[str] | str = ("q_proj", "v_proj")
) -> LoraParameterCount:
    """Count LoRA's trainable parameters without building it: ``sum over targets of r * (in + out)``.

    ``model_or_name``: a model (meta device is fine) or a shipped architecture name
    (:data:`SHIPPED_ARCHITECTURES`, built on "meta"). Equals what
    ``peft.get_peft_model(model, LoraConfig(r=r, target_modules=...)).get_nb_trainable_parameters()``
    reports (tested).
    """
    check_number("r", r, integer=True)
    model = as_model(model_or_name)
    matched = match_target_modules(model, target_modules)
    by_target: dict[str, int] = {}
    for name, module in matched.items():
        suffix = name.rsplit(".", 1)[-1]
        by_target[suffix] = by_target.get(suffix, 0) + r * (module.in_features + module.out_features)
    _, base = count_parameters(model)
    return LoraParameterCount(rank=r, lora_params=sum(by_target.values()), base_params=base,
                              n_modules=len(matched), by_target=by_target)


def quantizable_params(model_or_name: nn.Module | str) -> int:
    """Weights that 4-bit loading replaces: every ``nn.Linear`` weight except the output layer
    (bitsandbytes/transformers keep ``lm_head``, embeddings, norms and biases in 16-bit)."""
    model = as_model(model_or_name)
    weights = {id(w): w for w in (model.get_submodule(n).weight for n in
                                  find_target_modules(model, "all-linear", allowed_types=(nn.Linear,)))}
    return sum(w.numel() for w in weights.values())


def lora_memory(
    model_or_name: nn.Module | str,
    r: int,
    target_modules: Iterable[str] | str = ("q_proj", "v_proj"),
    method: str = "lora",
    activations_gb: float | None = None,
) -> MemoryEstimate:
    """Training memory of LoRA (``method="lora"``) or QLoRA (``"qlora"``) with these adapters."""
    if method not in METHODS or not METHODS[method]["adapter"]:
        adapters = [m for m, spec in METHODS.items() if spec["adapter"]]
        raise ValueError(f"lora_memory needs an adapter method {adapters}, got {method!r}.")
    count = lora_parameter_count(model_or_name, r, target_modules)
    extra = {"quantized_params": quantizable_params(model_or_name)} if METHODS[method].get("quantized") else {}
    return method_memory(method, count.base_params, adapter_params=count.lora_params, activations_gb=activations_gb, **extra)


def memory_estimates(
    model: str | DecoderShape,
    methods: Iterable[str] = tuple(METHODS),
    *,
    lora_rank: int = 64,
    lora_targets: Iterable[str] | str = "all-linear",
    activations_gb: float | None = None,
) -> dict[str, MemoryEstimate]:
    """``{method: MemoryEstimate}`` for one model: a shipped architecture name (counted on the meta
    device), a key of :data:`peftedu.course.shapes.LLAMA_SHAPES` ("7B", "65B", ...) or a DecoderShape."""
    if isinstance(model, str) and model in LLAMA_SHAPES:
        model = LLAMA_SHAPES[model]
    methods = list(methods)
    if not methods:
        raise ValueError(f"Pick at least one method from {list(METHODS)}.")
    estimates = {}
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; known: {list(METHODS)}.")
        spec = METHODS[method]
        if isinstance(model, DecoderShape):
            n = model.n_params()
            adapter = model.lora_params(lora_rank, lora_targets) if spec["adapter"] else None
            extra = {"quantized_params": model.linear_params()} if spec.get("quantized") else {}
            estimates[method] = method_memory(method, n, adapter_params=adapter, activations_gb=activations_gb, **extra)
        elif isinstance(model, str):
            if spec["adapter"]:
                estimates[method] = lora_memory(model, lora_rank, lora_targets, method, activations_gb)
            else:
                estimates[method] = method_memory(method, count_parameters(as_model(model))[1], activations_gb=activations_gb)
        else:
            raise ValueError(
                f"model must be a shipped architecture {SHIPPED_ARCHITECTURES}, a LLaMA size {list(LLAMA_SHAPES)} "
                f"or a DecoderShape; got {model!r}."
            )
    return estimates


PART_COLORS = {
    "weights": "#4c72b0", "gradients": "#dd8452", "master weights": "#937860",
    "optimizer states": "#c44e52", "activations": "#8172b3",
}


def plot_memory_breakdown(estimates: Mapping[str, MemoryEstimate], ax=None, gpu_gb: float | None = None, title: str = ""):
    """Stacked bars, one per estimate: weights / gradients / master weights / optimizer / activations (GB).

    ``gpu_gb`` draws a horizontal line at a GPU's memory. Returns the matplotlib Axes.
    """
    if not estimates:
        raise ValueError("Nothing to plot: estimates is empty.")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.4 * len(estimates) + 3, 3.5))
    labels = list(estimates)
    bottoms = [0.0] * len(labels)
    for part, color in PART_COLORS.items():
        heights = [estimates[k].breakdown()[part] for k in labels]
        if any(heights):
            ax.bar(labels, heights, bottom=bottoms, color=color, label=part)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, k in enumerate(labels):
        ax.text(i, bottoms[i], f"{estimates[k].total_gb:.1f}", ha="center", va="bottom", fontsize=8)
    if gpu_gb:
        ax.axhline(gpu_gb, color="k", ls="--", lw=1, label=f"{gpu_gb:g} GB GPU")
    ax.set_ylabel("GB (1e9 bytes)")
    ax.set_title(title)
    # outside the axes, right of the bars: inside, the legend covered the last (often the smallest) bar
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    return ax


# --------------------------------------------------------------------------------------------------
# Widgets (thin wrappers)
# --------------------------------------------------------------------------------------------------


#: The line each explorer prints under its default state: the controls do nothing without a kernel.
LIVE_NOTE = "Run this cell in a live notebook to explore: the controls need a running kernel."


def _show(fig) -> None:
    """Render a figure inside the current (Output widget) context, then free it."""
    display(fig)
    plt.close(fig)


@functools.lru_cache(maxsize=None)
def _explorer_box_class():
    class ExplorerBox(widgets.VBox):
        """A VBox whose text form -- what a view without a kernel shows -- says what it is, not its children."""

        def __init__(self, children, label: str):
            super().__init__(children)
            self.label = label

        def __repr__(self) -> str:
            return f"{self.label} (interactive: the controls need a running kernel)"

    return ExplorerBox


def explorer_box(children, label: str):
    """``ipywidgets.VBox(children)`` whose ``repr`` is ``"<label> (interactive: ...)"`` (under ipywidgets' 110
    characters), used by the explorers here and by :func:`peftedu.course.quiz.self_check_widget`."""
    return _explorer_box_class()(children, label)


def describe_lora(name: str, r: int, targets: Iterable[str] | str) -> str:
    """The explorer's text: counts, then LoRA and QLoRA memory (activations excluded)."""
    count = lora_parameter_count(name, r, targets)
    lines = [f"{name}: LoRA r={r} on {count.n_modules} modules ({', '.join(count.by_target)})", str(count)]
    for method in ("lora", "qlora"):
        est = lora_memory(name, r, targets, method)
        lines.append(f"{method:>6}: {est.total_gb:6.2f} GB = weights {est.weights_gb:.2f} + grads {est.gradients_gb:.3f} "
                     f"+ optimizer {est.optimizer_gb:.3f} (activations not included)")
    return "\n".join(lines)


def _default_rank_targets(name: str) -> list[str]:
    """The rank explorer's first selection: the query and value projections (BLOOM: the fused query_key_value)."""
    names = linear_suffixes(name)
    return [t for t in names if t in ("q_proj", "v_proj", "query_key_value")] or names[:1]


def _lora_view(name: str, rank: int, targets: list[str], plot: bool) -> None:
    """What the rank explorer shows for one setting: :func:`describe_lora`, then LoRA vs QLoRA bars."""
    print(describe_lora(name, rank, targets))
    if plot:
        fig, ax = plt.subplots(figsize=(6, 3))
        plot_memory_breakdown({m: lora_memory(name, rank, targets, m) for m in ("lora", "qlora")},
                              ax=ax, title=f"{name}, r={rank}")
        _show(fig)


def lora_rank_explorer(architectures: Iterable[str] = SHIPPED_ARCHITECTURES, rank: int = 8, plot: bool = True,
                       static: bool = True):
    """Dropdown (architecture) x rank slider x target selection -> parameters and memory.

    Returns an ipywidgets ``VBox``; display it in a notebook. With ``static=True`` it first prints its default
    state (text, and the figure if ``plot``) and :data:`LIVE_NOTE`, so a view without a kernel shows the numbers.
    The computing is :func:`describe_lora` / :func:`lora_parameter_count` / :func:`lora_memory`.
    """
    architectures = list(architectures)
    if rank not in RANK_CHOICES:
        raise ValueError(f"rank must be one of {RANK_CHOICES}, got {rank}.")
    if static:
        first = architectures[0]
        _lora_view(first, rank, _default_rank_targets(first), plot)
        print(LIVE_NOTE)
    arch = widgets.Dropdown(options=architectures, value=architectures[0], description="model")
    r = widgets.SelectionSlider(options=RANK_CHOICES, value=rank, description="rank r")
    targets = widgets.SelectMultiple(options=linear_suffixes(arch.value), value=_default_rank_targets(arch.value),
                                     description="targets", rows=7)

    def on_arch(change):
        targets.options = linear_suffixes(change["new"])
        targets.value = _default_rank_targets(change["new"])

    arch.observe(on_arch, "value")

    def update(name, rank_value, target_names):
        valid = [t for t in target_names if t in linear_suffixes(name)]
        if not valid:
            print("Select at least one target module.")
            return
        _lora_view(name, rank_value, valid, plot)

    out = widgets.interactive_output(update, {"name": arch, "rank_value": r, "target_names": targets})
    return explorer_box([widgets.HBox([arch, r]), targets, out], "LoRA rank explorer")


GPU_CHOICES = (("none", 0), ("24 GB", 24), ("48 GB", 48), ("80 GB", 80))


def _memory_view(model_name, method_names, lora_rank: int, activations_gb: float, gpu_gb: float, plot: bool) -> None:
    """What the memory explorer shows for one setting: a line per method, then the stacked bars."""
    estimates = memory_estimates(model_name, method_names, lora_rank=lora_rank, activations_gb=activations_gb or None)
    for name, est in estimates.items():
        print(f"{name:>10}: {est.total_gb:8.1f} GB  ({METHODS[name]['description']})")
    if plot:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        plot_memory_breakdown(estimates, ax=ax, gpu_gb=gpu_gb or None, title=f"{model_name}, LoRA r={lora_rank} all-linear")
        _show(fig)


def memory_explorer(models: Iterable[str] = ("7B", "13B", "33B", "65B", "70B") + SHIPPED_ARCHITECTURES, plot: bool = True,
                    static: bool = True):
    """Model size x methods x LoRA rank x activations -> stacked memory bars against a GPU line.

    Returns an ipywidgets ``VBox``. With ``static=True`` it first prints its default state (the first model, every
    method, LoRA r=64, no activations, a 24 GB GPU: one line per method, and the figure if ``plot``) and
    :data:`LIVE_NOTE`, so a view without a kernel shows the numbers. The computing is :func:`memory_estimates`.
    """
    models = list(models)
    defaults = dict(model_name=models[0], method_names=tuple(METHODS), lora_rank=64, activations_gb=0.0, gpu_gb=24)
    if static:
        print(f"{models[0]}, every method, LoRA r=64 on all linear layers, activations not included "
              f"(the explorer's default state):")
        _memory_view(**defaults, plot=plot)
        print(LIVE_NOTE)
    model = widgets.Dropdown(options=models, value=defaults["model_name"], description="model")
    methods = widgets.SelectMultiple(options=list(METHODS), value=defaults["method_names"], description="methods", rows=5)
    rank = widgets.SelectionSlider(options=RANK_CHOICES, value=defaults["lora_rank"], description="LoRA r")
    activations = widgets.FloatText(value=defaults["activations_gb"], description="activ. GB")
    gpu = widgets.Dropdown(options=list(GPU_CHOICES), value=defaults["gpu_gb"], description="GPU")

    def update(model_name, method_names, lora_rank, activations_gb, gpu_gb):
        if not method_names:
            print("Select at least one method.")
            return
        if activations_gb < 0:
            print("Activations must be >= 0 GB.")
            return
        _memory_view(model_name, method_names, lora_rank, activations_gb, gpu_gb, plot)

    out = widgets.interactive_output(update, {"model_name": model, "method_names": methods, "lora_rank": rank,
                                              "activations_gb": activations, "gpu_gb": gpu})
    return explorer_box([widgets.HBox([model, rank]), widgets.HBox([methods, widgets.VBox([activations, gpu])]), out],
                        "memory explorer")


__all__ = [
    "LIVE_NOTE", "LoraParameterCount", "RANK_CHOICES", "SHIPPED_ARCHITECTURES", "describe_lora", "explorer_box",
    "linear_suffixes", "lora_memory", "lora_parameter_count", "lora_rank_explorer", "match_target_modules",
    "memory_estimates", "memory_explorer", "plot_memory_breakdown", "quantizable_params",
]
