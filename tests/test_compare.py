"""The verdict helper and the one convention for numbers that vary between machines (issue 11)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import torch

from peftedu.course.compare import MEASURED, cmp, measured, rounding_tolerance

ROOT = Path(__file__).resolve().parent.parent


def _sanitize(text: str) -> str:
    """What nbval does with notebooks/sanitize.cfg (its own parser: 'regex: ...' then 'replace: ...' lines)."""
    pairs = re.findall(r"^regex: (.*)$\n^replace: (.*)$", (ROOT / "notebooks" / "sanitize.cfg").read_text(),
                       flags=re.MULTILINE)
    assert pairs, "notebooks/sanitize.cfg holds no regex/replace pairs"
    for pattern, replacement in pairs:
        text = re.sub(pattern, replacement, text)
    return text


def test_cmp_prints_a_verdict_whose_text_does_not_depend_on_the_digits(capsys):
    a = torch.tensor([1.0, 2.0, 3.0])
    outputs = []
    for noise in (0.0, 2.3e-7, 7.1e-6):
        diff = cmp("logits: scratch vs peft", a, a + noise, atol=1e-5)
        assert diff == pytest.approx(noise, abs=3e-7)  # the float32 sum rounds the noise itself
        outputs.append(_sanitize(capsys.readouterr().out))
    assert outputs[0] == outputs[1] == outputs[2]
    assert "equal within atol=1e-05: True" in outputs[0] and f"max diff {MEASURED}<MEASURED>" in outputs[0]


def test_cmp_bit_for_bit_and_expected_differences(capsys):
    a = torch.randn(4, 5)
    cmp("reloaded vs trained", a, a.clone(), atol=0)
    assert "identical, bit for bit: True" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="exceeds atol=0"):
        cmp("reloaded vs trained", a, a + 1e-7, atol=0)
    cmp("prefix changes the logits", a, a + 1.0, atol=1e-5, expect="different")
    assert "differ by more than atol=1e-05: True" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="does not exceed"):
        cmp("prefix changes the logits", a, a + 1e-7, atol=1e-5, expect="different")
    with pytest.raises(ValueError, match="expect must be"):
        cmp("x", a, a, expect="close")
    with pytest.raises(ValueError, match="shapes differ"):
        cmp("x", a, a[:2])


def test_measured_marks_numbers_strings_and_lists():
    assert measured(0.8542) == "≈0.854"
    assert measured(2.3e-5, ".1e") == "≈2.3e-05"
    assert measured("technology") == "≈'technology'"
    assert measured([0.5, 0.25], ".2f") == "[≈0.50, ≈0.25]"


@pytest.mark.parametrize("text, expected", [
    ("loss ≈1.908 -> ≈0.250, 9,216 trainable", "loss ≈<MEASURED> -> ≈<MEASURED>, 9,216 trainable"),
    ("score ≈0.854 on 48 rows", "score ≈<MEASURED> on 48 rows"),
    ("after ≈'technology'   reference 'technology'", "after ≈<MEASURED>   reference 'technology'"),
    ("example ≈'{\"name\": \"Dio\", \"age\": 67}' is right", "example ≈<MEASURED> is right"),
    ("moved ≈-74% and ≈1.2e+03", "moved ≈<MEASURED> and ≈<MEASURED>"),
])
def test_the_sanitizer_blanks_exactly_what_follows_the_mark(text, expected):
    assert _sanitize(text) == expected


def test_rounding_tolerance_follows_the_arithmetic():
    eps32 = torch.finfo(torch.float32).eps
    assert rounding_tolerance(torch.float32) == pytest.approx(10 * eps32)
    assert rounding_tolerance(torch.float32, magnitude=4.0, terms=100, headroom=1) == pytest.approx(eps32 * 4 * 10)
    assert rounding_tolerance(torch.bfloat16, terms=64) > 1000 * rounding_tolerance(torch.float32, terms=64)
    with pytest.raises(ValueError, match="terms"):
        rounding_tolerance(torch.float32, terms=0)


def test_rounding_tolerance_covers_a_reordered_sum():
    """The same float32 numbers added in two orders differ, but within the tolerance of the rule."""
    torch.manual_seed(0)
    values = torch.randn(4096) * 3
    forward = torch.zeros((), dtype=torch.float32)
    for v in values:
        forward += v
    pairwise = values.view(64, 64).sum(dim=1).sum()
    tol = rounding_tolerance(torch.float32, magnitude=values.abs().sum().item(), terms=values.numel(), headroom=1)
    assert (forward - pairwise).abs().item() <= tol


def test_a_derived_tolerance_is_stated_behind_the_mark(capsys):
    """A tolerance computed from measured magnitudes (trained logits) varies by machine in its digits too."""
    a = torch.zeros(3)
    cmp("merged vs unmerged", a, a, atol=rounding_tolerance(torch.float32, magnitude=37.6, terms=46080))
    printed = capsys.readouterr().out
    assert "equal within atol ≈1e-02: True" in printed and _sanitize(printed).count("≈<MEASURED>") == 2
    cmp("merged vs unmerged", a, a, atol=2e-3)
    assert "equal within atol=2e-03: True" in capsys.readouterr().out
