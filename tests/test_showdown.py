"""The showdown command: its runs, its peft comparison, its result files, the serving benchmark."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from peftedu.course import showdown as sd
from peftedu.course import showdown_report as report, showdown_serving, showdown_setup as setup

ROOT = Path(__file__).resolve().parent.parent

SMOKE = setup.Settings(model="tiny-random", profile="quick", max_steps=2, eval_rows=4, latency_rows=2,
                    latency_repeats=1, device="cpu")


def test_every_method_has_a_config_both_libraries_understand():
    import peft

    import peftedu
    from peftedu.course.training import get_profile

    model, tokenizer, _ = setup.load_model(SMOKE)
    for method in sd.METHODS.values():
        if method.config_class is None:
            assert method.kind == "full"
            continue
        class_name, kwargs = method.config_class.__name__, method.kwargs(model, tokenizer, get_profile("quick"))
        if method.kind in ("peft", "loraplus"):
            getattr(peft, class_name)(task_type="CAUSAL_LM", **kwargs)  # peft accepts the same kwargs
        if class_name == "PromptTuningConfig":
            kwargs = {k: v for k, v in kwargs.items() if k != "tokenizer_name_or_path"} | {"tokenizer": tokenizer}
        getattr(peftedu, class_name)(**kwargs)


def test_every_method_names_peftedu_s_config_class_and_peft_has_its_twin():
    """The registry holds classes, not names: peftedu's own (as exported), and HF peft has one of the same name
    for every method it runs as a twin."""
    import peft

    import peftedu

    for method in sd.METHODS.values():
        assert (method.config_class is None) == (method.kind == "full"), method.name
        if method.config_class is None:
            continue
        assert getattr(peftedu, method.config_class.__name__) is method.config_class, method.name
        if method.kind in ("peft", "loraplus"):
            assert hasattr(peft, method.config_class.__name__), method.name


@pytest.mark.parametrize("method,impl", [("lora", "peftedu"), ("lora", "peft"), ("prefix_tuning", "peftedu"),
                                         ("full", "peftedu"), ("loraplus", "peft"), ("qlora", "peftedu")])
def test_one_run_measures_every_column(method, impl):
    row = sd.run_one(method, impl, SMOKE)
    assert row["method"] == method and row["impl"] == impl and row["steps"] == 2
    assert 0 < row["trainable"] <= row["total"]
    assert row["time_per_step_s"] > 0 and row["tokens_per_s"] > 0 and 0.0 <= row["score"] <= 1.0
    assert row["eval_rows"] == 4
    if impl == "peftedu":
        assert row["latency_unmerged_rel"] > 0 and 0.0 <= row["retention"] <= 1.0
        assert (row["latency_merged_rel"] is not None) == sd.METHODS[method].mergeable
    else:  # a peft twin is measured for the ratios (time, memory) and its score only
        assert row["retention"] is None and row["latency_unmerged_rel"] is None
    assert row["mfu"] is None  # no FLOPs peak on a CPU
    if method == "full":
        assert row["trainable"] == row["total"]


def test_the_peft_twin_is_refused_for_methods_peft_lacks():
    with pytest.raises(ValueError, match="peft has no houlsby"):
        sd.run_one("houlsby", "peft", SMOKE)


def test_an_isolated_run_gives_the_same_trained_model_as_an_in_process_one():
    inside = sd.run_one("ia3", "peftedu", SMOKE)
    isolated = sd.run_isolated("ia3", "peftedu", SMOKE)
    for key in ("trainable", "total", "loss_first", "loss_last", "score", "retention", "tokens"):
        assert isolated[key] == pytest.approx(inside[key], rel=1e-4), key
    assert isolated["peak_memory_mb"] is not None


def test_unknown_methods_are_named():
    with pytest.raises(ValueError, match="Unknown method.*'lorax'.*the showdown knows"):
        sd.showdown(SMOKE, methods=["lorax"])


def _row(method, impl, score, step, memory):
    return {"method": method, "impl": impl, "family": "f", "trainable": 10, "total": 1000, "trainable_pct": 1.0,
            "time_per_step_s": step, "tokens_per_s": 100.0, "peak_memory_mb": memory, "score": score,
            "retention": 0.5, "forgetting": 0.25, "latency_unmerged_rel": 1.1, "latency_merged_rel": 1.0,
            "steps": 2, "tokens": 50, "note": "", "device": "cpu", "mfu": None, "model": "m", "weights": "random"}


def test_ratios_are_peftedu_over_peft_and_written_to_every_file(tmp_path):
    rows = [_row("lora", "peftedu", 0.9, 2.0, 300.0), _row("lora", "peft", 0.8, 1.6, 200.0),
            _row("bitfit", "peftedu", 0.7, 1.0, 100.0)]
    report.compare_with_peft(rows)
    assert rows[0]["time_ratio_vs_peft"] == pytest.approx(1.25)
    assert rows[0]["memory_ratio_vs_peft"] == pytest.approx(1.5)
    assert rows[0]["peft_score"] == 0.8 and "time_ratio_vs_peft" not in rows[2]
    result = {"rows": rows, "baseline": {"score": 0.0, "retention": 0.75, "eval_rows": 4},
              "settings": SMOKE.__dict__, "serving": {"adapters": 8, "requests": 16, "max_logit_diff": 1e-6,
                                                       "throughput_ratio": 3.0},
              "model": "m", "device": "cpu", "weights": "random", "date": "2026-01-01", "command": "c"}
    paths = report.write_results(result, tmp_path, "t")
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["lora", "lora", "bitfit"]
    assert float(table[0]["time_ratio_vs_peft"]) == pytest.approx(1.25)
    md = paths["md"].read_text()
    assert "| lora | 10 |" in md and "| 1.25 | 1.50 |" in md and "3.0x the throughput" in md
    assert "| bitfit |" in md and md.count("| lora |") == 1  # the table shows peftedu rows; the CSV has both
    assert json.loads(paths["json"].read_text())["rows"][0]["method"] == "lora"
    for key in ("plot_score", "plot_memory", "plot_time"):
        assert paths[key].stat().st_size > 1000


def test_interleaved_repeats_give_the_median_ratio_so_one_slow_run_cannot_move_it():
    rows = [_row("lora", "peftedu", 0.9, 2.2, 300.0), _row("lora", "peft", 0.8, 2.0, 300.0)]  # a slow first pair
    again = [{**_row("lora", impl, 0.9, step, 300.0), "repeat": k}
             for k, impl, step in [(1, "peft", 2.0), (1, "peftedu", 2.0), (2, "peftedu", 1.9), (2, "peft", 2.0)]]
    report.compare_with_peft(rows, again)
    assert rows[0]["time_ratios_vs_peft"] == pytest.approx([1.1, 1.0, 0.95])
    assert rows[0]["time_ratio_vs_peft"] == pytest.approx(1.0)  # the median, not the first pair's 1.10
    assert rows[0]["memory_ratio_vs_peft"] == 1.0 and rows[0]["peft_score"] == 0.8  # the score: repeat 0's
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        sd.showdown(SMOKE, methods=["lora"], repeats=0)


def test_repeats_are_logged_apart_and_alternate_which_library_goes_first(tmp_path, monkeypatch):
    order = []

    def fake(name, impl, settings):
        order.append((impl, settings.repeat))
        return {**_row(name, impl, 0.5, 1.0 + settings.repeat, 100.0), "repeat": settings.repeat}

    monkeypatch.setattr(sd, "run_one", fake)
    monkeypatch.setattr(sd, "baseline_scores", lambda settings: {"score": 0.0, "retention": 1.0, "eval_rows": 4})
    log = tmp_path / "runs.jsonl"
    result = sd.showdown(SMOKE, methods=["lora"], isolate=False, serving=False, progress=False, log=log, repeats=3)
    assert order == [("peftedu", 0), ("peft", 0), ("peft", 1), ("peftedu", 1), ("peftedu", 2), ("peft", 2)]
    assert result["rows"][0]["time_ratios_vs_peft"] == [1.0, 1.0, 1.0]
    result["command"] = "python -m peftedu showdown --repeats 3"
    assert "each the median of 3 interleaved pairs" in report.markdown(result)
    assert "per pair: lora 1.00, 1.00, 1.00." in report.markdown(result)
    monkeypatch.setattr(sd, "run_one", lambda *a: pytest.fail("a logged repeat was run again"))
    sd.showdown(SMOKE, methods=["lora"], isolate=False, serving=False, progress=False, log=log, repeats=3, run=False)


def test_more_pairs_in_the_log_count_in_the_full_table(tmp_path, monkeypatch):
    """``--methods llama_adapter --repeats 7`` after ``--repeats 3``: collecting all methods at 3 uses all 7 pairs
    of the one method; an unfinished pair (one library's run only) is not used."""
    monkeypatch.setattr(sd, "run_one", lambda name, impl, settings: {
        **_row(name, impl, 0.5, (1.0 if impl == "peft" else 1.1) + settings.repeat / 100, 100.0),
        "repeat": settings.repeat})
    monkeypatch.setattr(sd, "baseline_scores", lambda settings: {"score": 0.0, "retention": 1.0, "eval_rows": 4})
    log, quiet = tmp_path / "runs.jsonl", dict(isolate=False, serving=False, progress=False)
    sd.showdown(SMOKE, methods=["lora", "ia3"], log=log, repeats=3, **quiet)
    sd.showdown(SMOKE, methods=["ia3"], log=log, repeats=5, **quiet)
    sd._append_log(log, {"row": sd.run_one("ia3", "peftedu", replace(SMOKE, repeat=5))}, replace(SMOKE, repeat=5))
    monkeypatch.setattr(sd, "run_one", lambda *a: pytest.fail("collecting trained"))
    rows = {r["method"]: r for r in sd.showdown(SMOKE, methods=["lora", "ia3"], log=log, repeats=3, run=False,
                                                **quiet)["rows"] if r["impl"] == "peftedu"}
    assert len(rows["lora"]["time_ratios_vs_peft"]) == 3 and len(rows["ia3"]["time_ratios_vs_peft"]) == 5
    assert rows["ia3"]["time_ratios_vs_peft"] == pytest.approx([(1.1 + k / 100) / (1 + k / 100) for k in range(5)])
    result = {"rows": list(rows.values()), "settings": SMOKE.__dict__, "baseline": {"score": None}, "model": "m",
              "device": "cpu", "weights": "random", "date": "today", "command": "python -m peftedu showdown"}
    assert "each the median of 3 interleaved pairs, ia3's of 5 (the order" in report.markdown(result)


def test_a_short_init_text_is_repeated_to_fill_the_prefix_and_a_long_one_is_kept():
    words = lambda text: {"input_ids": text.split()}  # a tokenizer with one token per word
    assert sd._filled(words, "translate each word", 7) == "translate each word translate each word translate each word"
    assert sd._filled(words, "one two three four", 4) == "one two three four"
    assert set(sd.TEXT_INITS) == {"topic", "extract", "lexicon"} and sd.TEXT_INIT == sd.TEXT_INITS["topic"]


def test_a_mixed_batch_of_eight_adapters_equals_switching_request_by_request():
    serving = showdown_serving.serving_benchmark(SMOKE, n_adapters=8, rows_per_adapter=1, repeats=1)
    assert serving["requests"] == 8
    assert serving["max_logit_diff"] < 1e-4
    assert serving["adapters_differ_by"] > 1e-3  # the adapters really differ, so the check means something
    assert serving["throughput_ratio"] > 0


def test_a_shared_log_skips_finished_runs_and_ignores_other_settings(tmp_path, monkeypatch):
    log = tmp_path / "runs.jsonl"
    first = sd.showdown(SMOKE, methods=["ia3"], isolate=False, serving=False, progress=False, log=log)
    assert [(r["method"], r["impl"]) for r in first["rows"]] == [("ia3", "peftedu"), ("ia3", "peft")]
    monkeypatch.setattr(sd, "run_one", lambda *a: pytest.fail("a logged run was repeated"))
    monkeypatch.setattr(sd, "baseline_scores", lambda *a: pytest.fail("the logged baseline was recomputed"))
    again = sd.showdown(SMOKE, methods=["ia3"], isolate=False, serving=False, progress=False, log=log, run=False)
    assert again["rows"] == first["rows"] and again["baseline"] == first["baseline"]
    other = setup.Settings(**{**SMOKE.__dict__, "seed": 1})
    with pytest.raises(ValueError, match="has no baseline"):
        sd.showdown(other, methods=["ia3"], isolate=False, serving=False, progress=False, log=log, run=False)


def test_random_weights_take_the_named_tokenizer_and_are_never_scored(tmp_path, monkeypatch):
    """The GPU profile off the hub: a shipped config, random weights, a tokenizer folder; cost only."""
    from peftedu.course.models import load_base

    _, tokenizer = load_base(None, device="cpu")
    tokenizer.save_pretrained(tmp_path / "tok")
    monkeypatch.setenv("PEFTEDU_TOKENIZER", str(tmp_path / "tok"))
    settings = setup.Settings(model="smollm2-1.7b", random_weights=True, device="meta")
    model, loaded, weights = setup.load_model(settings)
    # the folder is named by its role, not its path: a results table is read on other machines
    assert weights.startswith("random") and weights.endswith("tokenizer: PEFTEDU_TOKENIZER folder")
    assert str(tmp_path) not in weights
    assert len(loaded) == model.config.vocab_size == 49152
    assert sd.baseline_scores(settings) == {"score": None, "retention": None, "eval_rows": 0}
    with pytest.raises(ValueError, match="32000 embeddings but the tokenizer"):  # SmolLM2 ids overflow TinyLlama
        setup.load_model(setup.Settings(model="tinyllama-1.1b", random_weights=True, device="meta"))
    monkeypatch.setenv("PEFTEDU_TOKENIZER", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="PEFTEDU_TOKENIZER="):
        setup.load_model(settings)


def test_a_table_without_scores_says_so_and_draws_no_score_plot(tmp_path):
    rows = [_row("lora", "peftedu", None, 2.0, 300.0), _row("qlora", "peftedu", None, 3.0, 100.0)]
    result = {"rows": rows, "baseline": {"score": None, "retention": None, "eval_rows": 0},
              "settings": SMOKE.__dict__, "serving": None, "model": "m", "device": "NVIDIA H100",
              "weights": "random", "date": "2026-01-01", "command": "c"}
    paths = report.write_results(result, tmp_path, "t")
    md = paths["md"].read_text()
    assert "no scores: random weights were never pretrained" in md and "| qlora |" in md
    assert "plot_score" not in paths and paths["plot_memory"].stat().st_size > 1000


def test_serving_is_called_the_same_only_within_the_rounding_of_its_dtype():
    from peftedu.course.showdown_serving import serving_verdict

    base = {"adapters": 8, "adapters_differ_by": 3.4, "max_abs_logit": 20.0}
    assert serving_verdict({**base, "max_logit_diff": 0.0, "dtype": "float32"}) == "the same logits, bit for bit"
    within = serving_verdict({**base, "max_logit_diff": 0.125, "dtype": "bfloat16"})
    assert within.startswith("logits within bfloat16 rounding") and "1.6e+00" in within  # 10 x 2^-7 x 20
    beyond = serving_verdict({**base, "max_logit_diff": 1e-3, "dtype": "float32"})
    assert beyond.startswith("logits beyond float32 rounding")
    older = serving_verdict({"adapters": 8, "adapters_differ_by": 3.4, "max_logit_diff": 0.13})
    assert "same" not in older and "no rounding tolerance" in older


def test_committed_results_name_no_machine_folder():
    """A results table is read on other machines: a tokenizer folder's path on the GPU box says nothing there."""
    for path in (ROOT / "results").rglob("*.md"):
        assert "/work/" not in path.read_text() and "/root/" not in path.read_text(), path
