"""LoRA's knobs, measured on ``lexicon``: the rank sweep (α/r against α/√r) and source 003's practical tips.

    python -m peftedu showdown --study   # after --grid (it reads LoRA's chosen rate): 20 runs, about 75 min on 2 cores

Every run is a showdown run of the ``lora`` method with some of its config replaced (``Settings.overrides``), seed 0,
the grid's budget (36 steps) and LoRA's learning rate as the grid chose it on validation, unless the variant
changes it. The runs share the grid's log (``results/grid_lexicon_runs.jsonl``), so the grid's own LoRA run is
the study's reference without training it again.

* **Rank sweep.** r = 1 … 64 on the attention projections, scaled three ways: α/r with α = 16 (LoRA, Hu et al.
  2021); α/√r with the same α = 16 (rsLoRA, Kalajdzievski 2023); and α/√r with α = 16/√8, which equals the
  showdown's scale 2 at r = 8, so the two rules differ only in how the scale moves with r. rsLoRA's argument: with
  α/r the update's scale shrinks as r grows, so at a fixed learning rate a larger rank learns no faster (the extra
  directions are wasted); with α/√r the scale shrinks more slowly and a larger rank can learn more.
* **Tips** (source 003, "实用建议"): r = 16 / α = 32 on all linear layers against q,v only; learning rate 2e-4
  against 2e-5; more steps (PEFT "needs more epochs"); ``lora_dropout``.

A verdict compares single runs, so it needs the seed noise: LoRA's standard deviation over the grid's three seeds.
Two single runs differ *beyond noise* when the gap is more than ``2 · √2 · sd`` (the sd of a difference of two runs
is √2 · sd); a gap smaller than one word of the test rows (``1 / (3 · rows)``) never counts.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .showdown_grid import GRID_SEEDS, GRID_STEPS, logged_run
from .showdown_setup import Settings

RANKS = (1, 4, 8, 16, 64)  # r = 1 … 64, denser around the showdown's r = 8 and the tips' r = 16
ALPHA = 16  # the showdown's LoRA: r = 8, α = 16 on the attention projections
MATCHED_ALPHA = ALPHA / math.sqrt(8)  # α/√r with this α is the showdown's scale (16/8 = 2) at r = 8
#: the three scalings of the rank sweep: label -> (α, use_rslora)
SCALINGS = {"α/r": (ALPHA, False), "α/√r": (ALPHA, True), "α/√r, = α/r at r=8": (MATCHED_ALPHA, True)}
#: source 003's recommended start: r = 16, α = 32 on every linear layer
TIP_CONFIG = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


@dataclass(frozen=True)
class Variant:
    """One run of the study: ``overrides`` replace the showdown LoRA's config; ``lr``/``steps`` None: the grid's."""

    study: str
    label: str
    overrides: dict | None = None
    lr: float | None = None
    steps: int | None = None


def _shared_run(r: int, scaling: str) -> str | None:
    """The label of the run a rank point shares: α/√r at r = 1 is α/r's run (the same scale, 16); the matched α/√r
    at r = 8 is the showdown's LoRA (scale 2, the grid's run)."""
    return {(1, "α/√r"): "r=1 α/r", (8, "α/√r, = α/r at r=8"): "r=8 α/r"}.get((r, scaling))


def rank_variants() -> list[Variant]:
    """r in :data:`RANKS` under each of :data:`SCALINGS`, minus the points that share a run (``_shared_run``);
    r = 8, α/r is the showdown's LoRA."""
    variants = []
    for r in RANKS:
        for scaling, (alpha, rs) in SCALINGS.items():
            if _shared_run(r, scaling):
                continue
            overrides = None if (r, scaling) == (8, "α/r") else {"r": r, "lora_alpha": alpha, "use_rslora": rs}
            variants.append(Variant("rank", f"r={r} {scaling}", overrides))
    return variants


def tip_variants() -> list[Variant]:
    """Source 003's tips as pairs (or series) of runs."""
    return [
        Variant("targets", "r16 α32 all-linear", TIP_CONFIG),
        Variant("targets", "r16 α32 q,v", {**TIP_CONFIG, "target_modules": ["q_proj", "v_proj"]}),
        Variant("lr", "lr 2e-4 (r16 α32 all-linear)", TIP_CONFIG, lr=2e-4),
        Variant("lr", "lr 2e-5 (r16 α32 all-linear)", TIP_CONFIG, lr=2e-5),
        Variant("steps", f"{GRID_STEPS // 2} steps", steps=GRID_STEPS // 2),
        Variant("steps", f"{GRID_STEPS} steps", None),
        Variant("steps", f"{2 * GRID_STEPS} steps", steps=2 * GRID_STEPS),
        Variant("dropout", "lora_dropout 0", None),
        Variant("dropout", "lora_dropout 0.05", {"lora_dropout": 0.05}),
        Variant("dropout", "lora_dropout 0.1", {"lora_dropout": 0.1}),
    ]


def variant_settings(base: Settings, variant: Variant, lora_lr: float) -> Settings:
    """The run's settings: the grid's, with the variant's learning rate, steps and config overrides."""
    return replace(base, seed=GRID_SEEDS[0], lr=variant.lr or lora_lr, max_steps=variant.steps or base.max_steps,
                   overrides=variant.overrides, validation=True, delta_w=False)


def run_study(grid: dict, log: Path, progress: bool = True, isolate: bool = True) -> dict:
    """Every run of the rank sweep and the tips (reusing the log's); returns the result to write."""
    lora = next((row for row in grid["table"] if row["method"] == "lora"), None)
    if lora is None:
        raise ValueError("The grid has no lora row: run `python -m peftedu showdown --grid` (with lora) first; the "
                         "study starts from LoRA's learning rate as the grid chose it.")
    base = Settings(**{**grid["settings"], "lr": None})
    variants = rank_variants() + tip_variants()
    runs = []
    for variant in tqdm(variants, desc="LoRA study", disable=not progress):
        one = variant_settings(base, variant, lora["lr"])
        row = logged_run("lora", one, log, grid["baseline"], isolate)
        runs.append({"study": variant.study, "label": variant.label, "overrides": variant.overrides,
                     **{k: row[k] for k in ("lr", "steps", "trainable", "score", "val_score", "forgetting",
                                            "time_per_step_s")}})
    rows = grid["baseline"].get("eval_rows") or 48
    noise = max(lora["score_sd"], 1 / (3 * rows))
    return {"task": grid["task"], "lora_lr": lora["lr"], "lora_seed_sd": lora["score_sd"], "noise": noise,
            "threshold": 2 * math.sqrt(2) * noise, "full": next(r for r in grid["table"] if r["method"] == "full"),
            "runs": runs, "model": grid["model"], "date": time.strftime("%Y-%m-%d")}


def study_runs(result: dict, study: str) -> dict[str, dict]:
    """The runs of one study by label, in the order they were defined."""
    return {run["label"]: run for run in result["runs"] if run["study"] == study}


def beyond_noise(result: dict, a: float, b: float) -> bool:
    """Two single runs' scores differ by more than the study's threshold (``2 · √2 · sd``)."""
    return abs(a - b) > result["threshold"]


def rank_run(result: dict, r: int, scaling: str) -> dict:
    """The run at rank ``r`` under ``scaling`` (a key of :data:`SCALINGS`), shared runs resolved."""
    runs = study_runs(result, "rank")
    return runs[_shared_run(r, scaling) or f"r={r} {scaling}"]


def scale(r: int, scaling: str) -> float:
    """The factor the update B A is multiplied by at rank ``r``. With Adam every entry of B moves by about the
    learning rate at the first steps, whatever its gradient's size, and the r rank-one terms of B A move together,
    so the first change of the scaled update grows like scale × r: α/r keeps it at α for every rank, α/√r lets it
    grow like √r."""
    alpha, rs = SCALINGS[scaling]
    return alpha / (math.sqrt(r) if rs else r)


def rank_curves(result: dict) -> dict[str, list[tuple[int, float]]]:
    """``{scaling: [(r, score), ...]}`` for each of :data:`SCALINGS`."""
    return {scaling: [(r, rank_run(result, r, scaling)["score"]) for r in RANKS] for scaling in SCALINGS}


def plot_ranks(result: dict) -> Figure:
    """Left: test score against rank under each scaling, at one learning rate (error bars: one seed's sd). Right: the
    same runs against scale × r, the size of the first Adam steps of B A (see :func:`scale`)."""
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    for scaling, points in rank_curves(result).items():
        label = f"{scaling.split(',')[0]}, α = {SCALINGS[scaling][0]:.3g}"
        left.errorbar([r for r, _ in points], [s for _, s in points], yerr=result["noise"], marker="o", capsize=3,
                      label=label)
        steps = [scale(r, scaling) * r for r, _ in points]
        right.errorbar(steps, [s for _, s in points], yerr=result["noise"], marker="o", capsize=3, ls="none",
                       label=label)
        for (r, score), x in zip(points, steps if scaling != "α/r" else []):  # α/r: every rank at α, unlabelled
            right.annotate(f"r={r}", (x, score), textcoords="offset points", xytext=(4, 4), fontsize=7)
    left.set_xscale("log", base=2)
    left.set_xticks(RANKS, [str(r) for r in RANKS])
    left.set_xlabel("rank r (attention projections)")
    left.set_ylabel(f"{result['task']} test score")
    left.set_title(f"learning rate {result['lora_lr']:g}, seed 0 (bars: ± seed sd)")
    left.legend(fontsize=8)
    right.set_xscale("log", base=2)
    right.set_xlabel("scale × r")
    right.set_title("the same runs against scale × r")
    fig.tight_layout()
    return fig


def markdown(result: dict) -> str:
    lines = [f"# LoRA study on `{result['task']}` ({result['model']})", "",
             f"Seed 0; learning rate {result['lora_lr']:g} (the grid's choice for LoRA) unless a row says otherwise. "
             f"Two runs differ beyond noise when their scores are more than {result['threshold']:.3f} apart "
             f"(2·√2 × LoRA's seed sd {result['lora_seed_sd']:.3f}, at least one word).", "",
             "| study | run | trainable | lr | steps | score | forgetting | s/step |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in result["runs"]:
        lines.append(f"| {run['study']} | {run['label']} | {run['trainable']:,} | {run['lr']:g} | {run['steps']} | "
                     f"{run['score']:.2f} | {run['forgetting']:+.2f} | {run['time_per_step_s']:.2f} |")
    return "\n".join(lines) + "\n"


def write_study(result: dict, out: Path) -> dict[str, Path]:
    stem = f"lora_study_{result['task']}"
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}_ranks.png"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["md"].write_text(markdown(result))
    plot_ranks(result).savefig(paths["png"], dpi=110)
    return paths


def main(args) -> None:
    """``python -m peftedu showdown --study``: read ``OUT/grid_<task>.json``, run the study, write its files
    (``--smoke``: every run in this process, as the grid's smoke does; CI)."""
    task = args.task if args.task != "topic" else "lexicon"
    out = Path(args.out)
    grid_path = out / f"grid_{task}.json"
    if not grid_path.is_file():
        raise FileNotFoundError(f"{grid_path} is missing: run `python -m peftedu showdown --grid --out {out}` first.")
    grid = json.loads(grid_path.read_text())
    start = time.perf_counter()
    result = run_study(grid, Path(args.log or out / f"grid_{task}_runs.jsonl"), isolate=not args.smoke)
    paths = write_study(result, out)
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:,.0f} s)")


__all__ = ["MATCHED_ALPHA", "RANKS", "SCALINGS", "TIP_CONFIG", "Variant", "beyond_noise", "markdown", "plot_ranks",
           "rank_curves", "rank_run", "rank_variants", "run_study", "scale", "study_runs", "tip_variants",
           "write_study"]
