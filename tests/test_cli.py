"""The command line: ``python -m peftedu tour`` (the main job) end to end, on a shortened profile."""

from __future__ import annotations

import dataclasses
import json

import peftedu.course.training as training
from peftedu.__main__ import main
from peftedu.course.data import load_task


def test_tour_runs_end_to_end_and_writes_its_numbers(tmp_path, monkeypatch, capsys):
    # the real quick profile trains 12 steps per task (minutes); the code path is the same at 3 steps
    short = dataclasses.replace(training.PROFILES["quick"], max_steps=3, eval_rows=4)
    monkeypatch.setitem(training.PROFILES, "quick", short)
    out = tmp_path / "tour.json"
    main(["tour", "--tasks", "topic", "--profile", "quick", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())["tasks"]["topic"]
    assert result["n_eval"] == 4 and result["train_steps"] == 3
    assert result["trainable_params"] == 921_600  # LoRA r=8 on q, k, v, o of SmolLM2
    assert result["final_loss"] < result["first_loss"]
    assert "zero-shot score" in printed and "after LoRA score" in printed and "before    :" in printed
    # the example is the first test row, whatever the model answers, and says whether that answer is right
    example = result["example"]
    assert example["input"] == load_task("topic", "test")[0]["input"]
    verdict = "right" if example["after_correct"] else "wrong"
    assert f"after     : {example['after']!r} ({verdict})" in printed
