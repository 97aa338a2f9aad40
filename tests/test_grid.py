"""The honest comparison's arithmetic (peftedu.course.showdown_grid) and the ΔW spectra (peftedu.course.lowrank).

The grid's runs are too slow for the unit tests (about an hour on a CPU); what decides its verdicts -- which
learning rate is chosen, mean ± sd, which differences are beyond the seed noise -- is tested here on rows made
by hand, and the whole pipeline once on a tiny random model (``showdown --grid --smoke`` in .ci/run)."""

from __future__ import annotations

import json

import pytest
import torch

from peftedu.course import lowrank, showdown_grid
from peftedu.course.showdown import METHODS
from peftedu.course.showdown_grid import aggregate, choose_lr, grid_lrs, mean_sd, separated


def test_every_method_gets_the_same_three_point_grid_around_its_default():
    assert grid_lrs(2e-3) == [0.00067, 0.002, 0.006]
    assert grid_lrs(5e-5) == [1.7e-05, 5e-05, 0.00015]
    assert set(showdown_grid.GRID_METHODS) <= set(METHODS) and len(showdown_grid.GRID_SEEDS) >= 3


def test_the_learning_rate_is_chosen_on_validation_and_ties_go_to_the_default():
    rows = [{"lr": 1e-3, "val_score": 0.4}, {"lr": 3e-3, "val_score": 0.6}, {"lr": 9e-3, "val_score": 0.6}]
    assert choose_lr(rows, 3e-3) == 3e-3  # a tie with the default: the default
    assert choose_lr(rows, 1e-3) == 3e-3  # a tie away from it: the nearer (in log scale)
    assert choose_lr([{"lr": 1e-3, "val_score": 0.9, "score": 0.0}] + rows[1:], 3e-3) == 1e-3  # test score unused
    with pytest.raises(ValueError, match="validation"):
        choose_lr([{"lr": 1e-3, "val_score": None}], 1e-3)


def test_mean_sd_and_separation():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([0.5]) == (0.5, 0.0)
    a = {"score_mean": 0.60, "score_sd": 0.02, "seeds": 3}
    b = {"score_mean": 0.50, "score_sd": 0.02, "seeds": 3}
    noisy = {"score_mean": 0.55, "score_sd": 0.10, "seeds": 3}
    assert separated(a, b) and not separated(a, noisy) and not separated(b, noisy)
    exact = {"score_mean": 1.0, "score_sd": 0.0, "seeds": 3}
    assert separated(exact, {**exact, "score_mean": 0.99}) and not separated(exact, exact)


def _rows(method, val, test, forgetting, lrs=(1e-3, 3e-3, 9e-3)):
    rows = [{"method": method, "lr": lr, "seed": 0, "val_score": v, "score": t0, "forgetting": forgetting[0],
             "trainable": 10, "trainable_pct": 1.0} for lr, v, t0 in zip(lrs, val, [test[0]] * 3)]
    best = lrs[val.index(max(val))]
    rows += [{"method": method, "lr": best, "seed": s, "val_score": 0.0, "score": t, "forgetting": f,
              "trainable": 10, "trainable_pct": 1.0} for s, t, f in zip((1, 2), test[1:], forgetting[1:])]
    return rows


def test_aggregate_ranks_by_mean_and_says_who_beats_whom():
    rows = (_rows("strong", [0.2, 0.8, 0.5], [0.80, 0.82, 0.78], [0.1, 0.2, 0.3])
            + _rows("weak", [0.1, 0.2, 0.3], [0.30, 0.32, 0.28], [0.0, 0.0, 0.0])
            + _rows("noisy", [0.5, 0.1, 0.1], [0.2, 0.9, 0.5], [0.5, 0.5, 0.5]))
    table = aggregate(rows, ["weak", "noisy", "strong"], {"weak": 3e-3, "noisy": 3e-3, "strong": 3e-3})
    assert [r["method"] for r in table] == ["strong", "noisy", "weak"]
    strong, noisy, weak = table
    assert strong["lr"] == 3e-3 and not strong["lr_at_edge"] and weak["lr_at_edge"] and noisy["lr"] == 1e-3
    assert strong["score_mean"] == pytest.approx(0.80) and strong["score_sd"] == pytest.approx(0.02)
    assert strong["forgetting_mean"] == pytest.approx(0.2)
    assert strong["beats"] == ["weak"] and noisy["beats"] == [] and set(noisy["ties_with"]) == {"strong", "weak"}
    with pytest.raises(ValueError, match="incomplete"):
        aggregate(rows[:-1], ["noisy"], {"noisy": 3e-3})


def test_the_markdown_and_figures_come_from_the_result(tmp_path):
    rows = _rows("lora", [0.2, 0.8, 0.5], [0.80, 0.82, 0.78], [0.1, 0.2, 0.3])
    torch.manual_seed(0)
    delta = torch.randn(16, 2) @ torch.randn(2, 24)
    spectra = {"model.layers.0.self_attn.q_proj.weight": lowrank.matrix_report(delta)}
    result = {"task": "lexicon", "model": "m", "device": "cpu", "steps": 36, "factors": [1 / 3, 1, 3],
              "seeds": [0, 1, 2], "baseline": {"score": 0.0, "retention": 1.0}, "runs": rows,
              "table": aggregate(rows, ["lora"], {"lora": 3e-3}),
              "delta_w": {"summary": lowrank.summarize(spectra), "matrices": spectra}}
    paths = showdown_grid.write_grid(result, tmp_path)
    md = paths["md"].read_text()
    assert "| lora | 10 | **0.003** (0.001: 0.20, 0.003: 0.80, 0.009: 0.50) | 0.80 ± 0.02 | +0.20 ± 0.10 | – |" in md
    assert json.loads(paths["json"].read_text())["table"][0]["method"] == "lora"
    assert paths["png"].stat().st_size > 0 and paths["delta_w"].stat().st_size > 0


def test_a_low_rank_update_has_all_its_energy_in_few_directions():
    torch.manual_seed(0)
    low = torch.randn(64, 3) @ torch.randn(3, 96)
    report = lowrank.matrix_report(low, torch.Generator().manual_seed(0))
    assert report["top_k_energy"] == pytest.approx(1.0) and report["rank_90"] <= 3
    assert report["random_top_k_energy"] < 0.4  # a Gaussian matrix spreads its energy over all 64 directions
    full = lowrank.matrix_report(torch.randn(64, 96), torch.Generator().manual_seed(1))
    assert full["top_k_energy"] < 0.4 and full["rank_90"] > 30
    assert len(report["curve"]) == min(lowrank.CURVE_POINTS, 64) and report["shape"] == [64, 96]


def test_update_spectra_measure_what_training_changed():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(12, 20, bias=True)])
    model.head = torch.nn.Linear(20, 4)
    before = lowrank.snapshot(model)
    assert list(before) == ["layers.0.weight"]  # 2-D weights inside the decoder layers only
    with torch.no_grad():
        model.layers[0].weight += torch.outer(torch.ones(20), torch.arange(12.0))  # a rank-1 change
    spectra = lowrank.update_spectra(before, model)
    assert spectra["layers.0.weight"]["rank_90"] == 1
    assert lowrank.summarize(spectra)[0]["kind"] == "0" and lowrank.kind_of("a.b.q_proj.weight") == "q_proj"
    with pytest.raises(KeyError, match="same model"):
        lowrank.update_spectra({"layers.9.weight": torch.zeros(2, 2)}, model)


# --- the LoRA study (peftedu.course.lora_study) ------------------------------------------------
from peftedu.course import lora_study  # noqa: E402  (grouped with its tests)


def test_the_rank_sweep_covers_three_scalings_and_reuses_the_shared_runs():
    variants = lora_study.rank_variants()
    labels = [v.label for v in variants]
    assert labels[0] == "r=1 α/r" and "r=1 α/√r" not in labels  # the same scale (16) at r = 1: one run
    assert "r=8 α/√r, = α/r at r=8" not in labels  # the showdown's scale at r = 8: the grid's run
    assert len(variants) == 3 * len(lora_study.RANKS) - 2
    r8 = next(v for v in variants if v.label == "r=8 α/r")
    assert r8.overrides is None  # the showdown's own LoRA: the grid's run is reused, not trained again
    r64 = next(v for v in variants if v.label == "r=64 α/√r")
    assert r64.overrides == {"r": 64, "lora_alpha": lora_study.ALPHA, "use_rslora": True}
    matched = next(v for v in variants if v.label == "r=64 α/√r, = α/r at r=8")
    assert matched.overrides == {"r": 64, "lora_alpha": lora_study.MATCHED_ALPHA, "use_rslora": True}
    assert lora_study.scale(8, "α/√r, = α/r at r=8") == pytest.approx(lora_study.scale(8, "α/r")) == 2
    assert lora_study.scale(1, "α/√r") == lora_study.scale(1, "α/r") == 16
    assert lora_study.scale(64, "α/√r") == 2 and lora_study.scale(64, "α/r") == 0.25


def test_every_tip_of_source_003_has_its_runs():
    tips = lora_study.tip_variants()
    assert {v.study for v in tips} == {"targets", "lr", "steps", "dropout"}
    assert {v.lr for v in tips if v.study == "lr"} == {2e-4, 2e-5}
    assert [v.steps for v in tips if v.study == "steps"] == [showdown_grid.GRID_STEPS // 2, None,
                                                               2 * showdown_grid.GRID_STEPS]
    base = showdown_grid.Settings(task="lexicon", max_steps=36, lr=None)
    one = lora_study.variant_settings(base, tips[2], lora_lr=6e-3)
    assert (one.lr, one.max_steps, one.overrides["target_modules"], one.seed) == (2e-4, 36, "all-linear", 0)
    assert lora_study.variant_settings(base, tips[4], lora_lr=6e-3).lr == 6e-3


def _study(scores):
    runs = [{"study": "rank", "label": label, "score": score, "lr": 1e-3, "steps": 36, "trainable": 1,
             "forgetting": 0.1, "time_per_step_s": 1.0, "overrides": None} for label, score in scores.items()]
    return {"task": "lexicon", "model": "m", "lora_lr": 1e-3, "lora_seed_sd": 0.02, "noise": 0.02,
            "threshold": 2 * 2 ** 0.5 * 0.02, "runs": runs}


def test_rank_curves_share_r1_and_the_verdict_needs_more_than_noise(tmp_path):
    scores = {v.label: 0.3 for v in lora_study.rank_variants()}
    scores["r=1 α/r"] = 0.1
    scores["r=64 α/√r"] = 0.94
    scores["r=1 α/√r, = α/r at r=8"] = 0.2
    result = _study(scores)
    curves = lora_study.rank_curves(result)
    assert list(curves) == list(lora_study.SCALINGS)
    assert curves["α/r"][0] == curves["α/√r"][0] == (1, 0.1)  # the shared run at r = 1
    assert curves["α/√r, = α/r at r=8"][0] == (1, 0.2)
    assert curves["α/√r"][-1] == (64, pytest.approx(0.94))
    assert lora_study.rank_run(result, 8, "α/√r, = α/r at r=8")["label"] == "r=8 α/r"  # the shared run at r = 8
    assert lora_study.beyond_noise(result, 0.3, 0.4) and not lora_study.beyond_noise(result, 0.3, 0.33)
    paths = lora_study.write_study(result, tmp_path)
    assert "| rank | r=64 α/√r | 1 | 0.001 | 36 | 0.94 | +0.10 | 1.00 |" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 0


def test_the_study_needs_the_grid_first():
    with pytest.raises(ValueError, match="--grid"):
        lora_study.run_study({"table": [{"method": "full"}]}, log=None)


def _first_adam_step_gain(r: int, scaling: str, seeds: int = 16) -> float:
    """The loss decrease of one Adam step on a LoRA pair (B = 0, A Kaiming) at rank r, averaged over seeds."""
    gains = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(32, 64, generator=g), torch.randn(32, 48, generator=g)
        a = torch.empty(r, 64)
        torch.nn.init.kaiming_uniform_(a, a=5 ** 0.5, generator=g)
        a.requires_grad_()
        b = torch.zeros(48, r, requires_grad=True)
        loss = lambda: ((lora_study.scale(r, scaling) * x @ a.T @ b.T - y) ** 2).mean()
        optimizer = torch.optim.Adam([a, b], lr=1e-4)
        before = loss()
        before.backward()
        optimizer.step()
        with torch.no_grad():
            gains.append((before - loss()).item())
    return sum(gains) / seeds


def test_the_first_adam_step_grows_like_scale_times_r():
    # lora_study.scale's docstring: with Adam the first change of the scaled update grows like scale × r
    for scaling, expected in (("α/r", 1.0), ("α/√r", 2.0), ("α/√r, = α/r at r=8", 2.0)):  # from r = 4 to r = 16
        ratio = _first_adam_step_gain(16, scaling) / _first_adam_step_gain(4, scaling)
        assert ratio == pytest.approx(expected, rel=0.15), scaling
