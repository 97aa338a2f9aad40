"""Visible verdicts (after Karpathy's ``cmp``), and the one convention for numbers that vary by machine.

Every notebook proves a from-scratch result equal to a reference with one line::

    cmp("logits: scratch vs peft", scratch_logits, peft_logits)   # prints a verdict and asserts it

What a notebook prints must read the same on every learner's machine, because ``pytest --nbval``
compares it with the committed output. Floating-point results are not like that: the last digits
change with the CPU, its vector kernels (AVX-512, AVX2, NEON) and the thread count, since each
changes the order in which sums are added up. So:

* a comparison prints its **verdict** against a stated tolerance (``equal within atol=1e-05``),
  which is the claim and is asserted; the raw max difference is shown after ``≈``;
* a value that legitimately varies (a loss, a score after training, a generated answer after
  training, a timing) is printed through :func:`measured`, which puts ``≈`` in front of it.

``notebooks/sanitize.cfg`` replaces whatever follows ``≈`` before nbval compares, so a reader sees
every number while the comparison sees only what is the same everywhere: counts, shapes, dtypes,
verdicts and exact equalities. The assertion in the same cell carries the claim (``score >= 0.8``).

Tolerances come from the arithmetic, not from what one machine happened to give:
:func:`rounding_tolerance`.
"""

from __future__ import annotations

import math

import torch

MEASURED = "≈"  # prefix of every printed value that varies between machines (see notebooks/sanitize.cfg)


def measured(value, fmt: str = ".3f") -> str:
    """``value`` formatted with ``fmt`` behind the ``≈`` mark: measured here, its last digits vary by machine.

    Strings (a generated answer after training) are shown with ``repr``; numbers with ``fmt``.
    """
    if isinstance(value, str):
        return f"{MEASURED}{value!r}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(measured(v, fmt) for v in value) + "]"
    return f"{MEASURED}{value:{fmt}}"


def rounding_tolerance(dtype: torch.dtype, *, magnitude: float = 1.0, terms: int = 1,
                       headroom: float = 10.0) -> float:
    """An absolute tolerance for two computations that differ only in rounding.

    Each floating-point operation rounds its result to within ε (the dtype's machine epsilon:
    1.19e-07 for fp32, 7.8e-03 for bf16) of its size. When two routes add up the same ``terms``
    products in a different order (another kernel, another thread split, a merged weight instead
    of two matmuls), their rounding errors are independent and grow like a random walk, so the
    results differ by about ``ε · magnitude · √terms``, where ``magnitude`` is the size of the
    values compared. We allow ``headroom`` (default 10) times that::

        atol = headroom · ε · magnitude · √terms

    ``terms`` counts the additions on the path that differs: the reduction length of one matmul,
    times the number of layers the difference travels through.
    """
    if terms < 1 or magnitude < 0 or headroom <= 0:
        raise ValueError(f"need terms >= 1, magnitude >= 0 and headroom > 0; got terms={terms}, "
                         f"magnitude={magnitude}, headroom={headroom}.")
    eps = torch.finfo(dtype).eps
    return headroom * eps * magnitude * math.sqrt(terms)


def tolerance_text(atol: float) -> str:
    """``atol=1e-05`` for a round tolerance set by hand; ``atol ≈1e-02`` for one derived from measured values
    (:func:`rounding_tolerance` of a model's logits after training, say), whose digits vary by machine."""
    plain = f"{atol:.0e}"
    return f"atol={plain}" if float(plain) == atol else f"atol {measured(atol, '.0e')}"


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def cmp(name: str, a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, *, expect: str = "equal") -> float:
    """Print and assert a verdict on ``a`` and ``b``; return their max absolute difference.

    ``expect="equal"``: they must agree within ``atol`` (``atol=0``: bit for bit, a claim that only
    holds when both sides run the very same operations). ``expect="different"``: they must differ by
    more than ``atol`` (a change that is real, not rounding). The verdict is what the notebook claims
    and is the same on every machine; the raw max difference follows ``≈``, since its digits are not.
    """
    if expect not in ("equal", "different"):
        raise ValueError(f"expect must be 'equal' or 'different'; got {expect!r}.")
    diff = max_abs_diff(a, b)
    if expect == "equal":
        verdict = "identical, bit for bit" if atol == 0 else f"equal within {tolerance_text(atol)}"
        ok = diff <= atol
    else:
        verdict = f"differ by more than {tolerance_text(atol)}"
        ok = diff > atol
    print(f"{name:<44} {verdict}: {ok}  (max diff {measured(diff, '.1e')})")
    if not ok:
        relation = "exceeds" if expect == "equal" else "does not exceed"
        raise AssertionError(f"{name}: max abs difference {diff:.3e} {relation} atol={atol:g}")
    return diff
