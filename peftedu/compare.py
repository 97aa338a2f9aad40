"""A visible comparison helper (after Karpathy's ``cmp``): exact / close / max difference.

Every notebook proves a from-scratch result equal to a reference with one line::

    cmp("logits: scratch vs peft", scratch_logits, peft_logits)   # prints and asserts
"""

from __future__ import annotations

import torch


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.detach().double() - b.detach().double()).abs().max().item()


def cmp(name: str, a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, check: bool = True) -> float:
    """Print whether ``a`` and ``b`` are exactly equal, close (``atol``), or not, with the max difference.

    Raises AssertionError when ``check`` and they differ by more than ``atol``. Returns the max difference.
    """
    diff = max_abs_diff(a, b)
    exact = diff == 0.0
    close = diff <= atol
    print(f"{name:<40} exact: {str(exact):<5} close (atol={atol:g}): {str(close):<5} max diff: {diff:.1e}")
    if check and not close:
        raise AssertionError(f"{name}: max abs difference {diff:.3e} exceeds atol={atol:g}")
    return diff
