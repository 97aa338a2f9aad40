"""The NF4 histogram explorer of notebook 07: where a layer's weights fall between the 4-bit levels.

:func:`nf4_histogram_explorer` computes the histogram of ``weight / block absmax`` beside the NF4, INT4 and FP4
levels (with each code's level usage and error), :func:`plot_nf4_histogram` draws it, and
:func:`nf4_histogram_widget` lets a slider pick the layer. The quantization itself is the library's
(:mod:`peftedu.quant`); this module only looks at it.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import nn

from ..quant.functional import QUANT_TYPES, _check_blocksize, _check_float_tensor, _nearest_level, _normalize_blocks, get_code
from ..tuners import matches_name
from .explorers import LIVE_NOTE


def linear_weights(model: nn.Module, skip_modules: Sequence[str] = ("lm_head",)) -> dict[str, torch.Tensor]:
    """{name: weight} of the model's nn.Linear layers, except those named in ``skip_modules``."""
    return {name: m.weight.detach() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(matches_name(name, s) for s in skip_modules)}


def nf4_histogram_explorer(weight: torch.Tensor, blocksize: int = 64, bins: int = 101) -> dict:
    """Histogram of ``weight / block absmax`` next to the NF4, INT4 and FP4 levels.

    Returns ``counts`` (bins,), ``bin_edges`` (bins+1,) over [-1, 1], ``levels`` {name: sorted
    (16,)}, ``level_usage`` {name: fraction of weights whose nearest level is each sorted level}
    and ``mse`` {name: mean squared quantization error in units of absmax**2}. NF4's levels sit at
    normal quantiles, so for bell-shaped weights its usage is flatter than INT4's or FP4's.
    """
    _check_float_tensor(weight)
    _check_blocksize(blocksize)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an int >= 2, got {bins!r}")
    normalized, _ = _normalize_blocks(weight.detach().reshape(-1).float().cpu(), blocksize)
    counts = torch.histc(normalized, bins=bins, min=-1, max=1)
    data = {"counts": counts, "bin_edges": torch.linspace(-1, 1, bins + 1), "levels": {},
            "level_usage": {}, "mse": {}, "numel": normalized.numel(), "blocksize": blocksize}
    for name in QUANT_TYPES:
        code = get_code(name)
        index = _nearest_level(normalized, code)
        sorted_levels, order = code.sort(stable=True)
        usage = torch.bincount(index, minlength=16).float()[order] / normalized.numel()
        data["levels"][name] = sorted_levels
        data["level_usage"][name] = usage
        data["mse"][name] = (normalized - code[index]).pow(2).mean().item()
    return data


def plot_nf4_histogram(data: dict, title: str = "", axes=None):
    """Draw ``nf4_histogram_explorer`` output: one panel per code, levels as vertical lines."""
    if axes is None:
        _, axes = plt.subplots(len(QUANT_TYPES), 1, figsize=(8, 6), sharex=True)
    edges = data["bin_edges"]
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    for ax, name in zip(axes, QUANT_TYPES):
        ax.bar(centres, data["counts"], width=width, color="lightgray")
        for level in data["levels"][name].unique():
            ax.axvline(level.item(), color="tab:red", lw=0.8)
        ax.set_ylabel(name.upper())
        ax.set_title(f"{title} {name.upper()} levels, mse={data['mse'][name]:.2e} (x absmax^2)", fontsize=9)
    axes[-1].set_xlabel("weight / block absmax")
    return axes


@functools.cache
def _explorer_box_class():
    """``ExplorerBox``: an ipywidgets VBox that a static view shows as its default state, not as ``VBox(...)``."""
    class ExplorerBox(widgets.VBox):
        """A live front-end renders the widget; a static view cannot, and picks the richest other type of the
        same display bundle: ``image/png`` (the default state, with ``LIVE_NOTE`` drawn under it),
        else ``text/plain`` (the note alone)."""

        static_png = ""  # base64 PNG of the default state, set by the function that builds the explorer

        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs) or {}
            data["text/plain"] = LIVE_NOTE
            if self.static_png:
                data["image/png"] = self.static_png
            return data

    return ExplorerBox


def _static_png(figure) -> str:
    """The figure with the static note under it, as base64 PNG; the figure is closed."""
    figure.text(0.5, 0.0, LIVE_NOTE, ha="center", va="top", fontsize=9, style="italic")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def nf4_histogram_widget(weights: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], blocksize: int = 64):
    """ipywidgets explorer: a slider picks the layer, the plot redraws. Built without a front-end.

    Returns an ``ExplorerBox`` (a VBox): displayed in a static view it shows the first layer's histograms and
    ``LIVE_NOTE`` instead of the widget's raw repr.
    """
    items = list(weights.items()) if isinstance(weights, Mapping) else [(str(i), w) for i, w in enumerate(weights)]
    if not items:
        raise ValueError("nf4_histogram_widget needs at least one weight")
    slider = widgets.IntSlider(value=0, min=0, max=len(items) - 1, description="layer")
    output = widgets.Output()

    def figure_of(index):
        name, weight = items[index]
        return plot_nf4_histogram(nf4_histogram_explorer(weight, blocksize), title=name)[0].figure

    def draw(_change=None):
        output.clear_output(wait=True)
        with output:
            figure = figure_of(slider.value)
            display(figure)
            plt.close(figure)  # shown once, by display

    slider.observe(draw, names="value")
    draw()
    box = _explorer_box_class()([slider, output])
    box.static_png = _static_png(figure_of(0))
    return box


__all__ = ["linear_weights", "nf4_histogram_explorer", "nf4_histogram_widget", "plot_nf4_histogram"]
