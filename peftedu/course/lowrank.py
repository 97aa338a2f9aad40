"""Is a full fine-tuning update low-rank? The singular values of ΔW = W_after - W_before, matrix by matrix.

LoRA (低秩适配) rests on a hypothesis (Hu et al. 2021, section 4): the update that fine-tuning makes to a
pretrained weight has a low "intrinsic rank", so ``B @ A`` with a small ``r`` can stand in for it. This module
measures it on a real update instead of assuming it:

* :func:`snapshot` copies the decoder layers' weight matrices before training;
* :func:`update_spectra` takes the singular values of each ``ΔW`` after training and reports, per matrix, the
  share of the update's energy (sum of squared singular values, i.e. ``‖ΔW‖_F²``) in its top 8 directions and
  how many directions hold 90% of it, next to the same numbers for a Gaussian random matrix of the same shape
  (what "not low-rank at all" looks like: its energy is spread over every direction);
* :func:`summarize` gives the median per matrix kind (``q_proj``, ``v_proj``, ``down_proj``, ...), for a table.

The showdown keeps these numbers for a full fine-tuning run with ``Settings(delta_w=True)``.
"""

from __future__ import annotations

import statistics

import torch

#: the top-k directions whose share of the update's energy is reported (LoRA's usual r = 8)
TOP_K = 8
#: the cumulative-energy curve is kept for the first CURVE_POINTS directions of each matrix
CURVE_POINTS = 64


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A float32 copy, on the CPU, of every 2-D weight inside the decoder layers (names with ``layers.``)."""
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters()
            if p.dim() == 2 and ".layers." in f".{name}"}


def _energy(singular_values: torch.Tensor) -> torch.Tensor:
    """Cumulative share of the energy in the first k directions, for k = 1 ... len."""
    squares = singular_values.double() ** 2
    total = squares.sum()
    if total == 0:
        return torch.zeros_like(squares)
    return torch.cumsum(squares, 0) / total


def matrix_report(delta: torch.Tensor, generator: torch.Generator | None = None) -> dict:
    """Energy in the top :data:`TOP_K` directions, directions for 90% of the energy, and a random matrix's."""
    curve = _energy(torch.linalg.svdvals(delta.double()))
    random_curve = _energy(torch.linalg.svdvals(torch.randn(delta.shape, generator=generator, dtype=torch.float64)))
    return {"shape": list(delta.shape), "norm": float(delta.norm()),
            "top_k_energy": float(curve[min(TOP_K, len(curve)) - 1]),
            "rank_90": int((curve < 0.9).sum()) + 1,
            "random_top_k_energy": float(random_curve[min(TOP_K, len(random_curve)) - 1]),
            "curve": [round(float(c), 6) for c in curve[:CURVE_POINTS]]}


def update_spectra(before: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, dict]:
    """:func:`matrix_report` of ΔW for every matrix in ``before`` (the names of :func:`snapshot`).

    ``model`` is the trained model; a name of ``before`` it lacks is an error (the snapshot must come from the
    same model)."""
    now = dict(model.named_parameters())
    missing = [name for name in before if name not in now]
    if missing:
        raise KeyError(f"The trained model has no parameters {missing[:3]}...; take the snapshot from the same model "
                       "before training.")
    generator = torch.Generator().manual_seed(0)
    return {name: matrix_report(now[name].detach().float().cpu() - weight, generator)
            for name, weight in before.items()}


def kind_of(name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``q_proj``."""
    parts = name.split(".")
    return parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]


def summarize(spectra: dict[str, dict]) -> list[dict]:
    """One row per matrix kind: matrices, median top-k energy of ΔW and of a random matrix, median rank_90 and
    the median shape's smaller side (the most directions a matrix of that kind can have)."""
    kinds: dict[str, list[dict]] = {}
    for name, report in spectra.items():
        kinds.setdefault(kind_of(name), []).append(report)
    return [{"kind": kind, "matrices": len(reports),
             "top_k_energy": statistics.median(r["top_k_energy"] for r in reports),
             "random_top_k_energy": statistics.median(r["random_top_k_energy"] for r in reports),
             "rank_90": statistics.median(r["rank_90"] for r in reports),
             "max_rank": min(reports[0]["shape"])}
            for kind, reports in kinds.items()]


__all__ = ["TOP_K", "kind_of", "matrix_report", "snapshot", "summarize", "update_spectra"]
