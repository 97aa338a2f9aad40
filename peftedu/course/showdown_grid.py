"""The honest comparison: each method's learning rate chosen on validation, then several seeds on test.

    python -m peftedu showdown --grid                      # lexicon, the GRID_METHODS: about an hour on 2 cores
    python -m peftedu showdown --grid --methods lora ia3   # a subset (runs already in the log are reused)

One showdown run from one seed, at a learning rate set by hand for each method, ranks noise as often as
methods. The grid fixes both, with the same budget for every method:

1. **Learning rate, on validation.** Each method trains at :data:`GRID_FACTORS` times its default learning rate
   (``showdown.METHODS``), seed 0, and the one with the best *validation* score is kept (a tie goes to the one
   nearer the default). The test split is never looked at to choose. A choice at the edge of the grid is flagged:
   the best rate may lie beyond it.
2. **Seeds, on test.** The chosen rate is trained again with the other :data:`GRID_SEEDS` (seed 0's run is
   reused). A seed changes the adapter's initialisation and the order of the training examples.
3. **Mean ± standard deviation** of the test score and of forgetting over the seeds, and a **separation**
   verdict for every pair of methods: their means differ by more than twice the standard error of the
   difference (``sqrt(sd_a²/n_a + sd_b²/n_b)``, Welch's). With three seeds this is a coarse screen, not a
   significance test; it stops a 0.02 gap between two noisy methods from being read as a ranking.

Every run is one isolated showdown run (:func:`peftedu.course.showdown.run_isolated`), appended to a JSON Lines
log, so an interrupted grid resumes where it stopped. Results: ``results/grid_<task>.{json,md,png}``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from . import lowrank
from .showdown import METHODS, baseline_scores, run_isolated, run_one
from .showdown_setup import Settings, _append_log, load_log
from .training import get_profile

#: each method's learning rate times these: the same three-point grid (a factor of 9 wide) for every method
GRID_FACTORS = (1 / 3, 1.0, 3.0)
#: seed 0 chooses the learning rate; all of them are the test runs
GRID_SEEDS = (0, 1, 2)
#: full fine-tuning (the reference) and the families of the sources' comparison tables: soft prompts (prompt and
#: prefix tuning), adapters (Houlsby), reparametrisation (LoRA); 25 runs, about an hour on two CPU cores
GRID_METHODS = ("full", "prompt_tuning", "prefix_tuning", "houlsby", "lora")
#: optimizer steps of every grid run (quick profile's batch: 8 examples a step, 0.72 epochs of lexicon's 400 rows)
GRID_STEPS = 36


def grid_lrs(default_lr: float, factors=GRID_FACTORS) -> list[float]:
    """The learning rates tried for a method: its default times each factor, to 2 significant digits."""
    return [float(f"{default_lr * factor:.2g}") for factor in factors]


def choose_lr(rows: list[dict], default_lr: float) -> float:
    """The learning rate of the best validation score; a tie goes to the rate nearest the default (in log scale),
    then to the smaller one."""
    if not rows or any(r.get("val_score") is None for r in rows):
        raise ValueError("choose_lr needs runs scored on validation (Settings(validation=True)).")
    best = max(r["val_score"] for r in rows)
    tied = [r["lr"] for r in rows if r["val_score"] == best]
    return min(tied, key=lambda lr: (abs(math.log(lr / default_lr)), lr))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    if not values:
        raise ValueError("mean_sd needs at least one value.")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def separated(a: dict, b: dict, key: str = "score") -> bool:
    """True when the means of ``a`` and ``b`` (rows of :func:`aggregate`) differ by more than twice the standard
    error of their difference. Two methods with no spread at all are separated by any difference."""
    diff = abs(a[f"{key}_mean"] - b[f"{key}_mean"])
    se = math.sqrt(a[f"{key}_sd"] ** 2 / a["seeds"] + b[f"{key}_sd"] ** 2 / b["seeds"])
    return diff > 2 * se if se > 0 else diff > 0


def aggregate(rows: list[dict], methods: list[str], defaults: dict[str, float], seeds=GRID_SEEDS) -> list[dict]:
    """One row per method, best first: chosen lr, its validation scores, test score and forgetting mean ± sd."""
    table = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        tuning = [r for r in mine if r["seed"] == seeds[0]]
        lr = choose_lr(tuning, defaults[method])
        runs = [r for r in mine if r["lr"] == lr and r["seed"] in seeds]
        if len(runs) != len(seeds):
            raise ValueError(f"{method}: {len(runs)} runs at lr {lr:g} for the seeds {list(seeds)}; the grid is "
                             "incomplete (run it again: finished runs are reused).")
        lrs = sorted(r["lr"] for r in tuning)
        score, score_sd = mean_sd([r["score"] for r in runs])
        forgetting, forgetting_sd = mean_sd([r["forgetting"] for r in runs])
        table.append({"method": method, "lr": lr, "lr_at_edge": lr in (lrs[0], lrs[-1]),
                      "validation": {f"{r['lr']:g}": r["val_score"] for r in sorted(tuning, key=lambda r: r["lr"])},
                      "seeds": len(runs), "trainable": runs[0]["trainable"], "trainable_pct": runs[0]["trainable_pct"],
                      "score_mean": score, "score_sd": score_sd, "scores": [r["score"] for r in runs],
                      "forgetting_mean": forgetting, "forgetting_sd": forgetting_sd,
                      "forgettings": [r["forgetting"] for r in runs]})
    table.sort(key=lambda row: -row["score_mean"])
    for row in table:
        row["beats"] = [o["method"] for o in table if o["score_mean"] < row["score_mean"] and separated(row, o)]
        row["ties_with"] = [o["method"] for o in table if o is not row and not separated(row, o)]
    return table


def logged_run(method: str, settings: Settings, log: Path, baseline: dict, isolate: bool = True) -> dict:
    """The peftedu run of ``method`` under ``settings``: from the log if it holds one, else run in its own process
    (``isolate=False``: in this one, for the smoke's tiny model), given its forgetting (``baseline``'s retention
    minus its own) and appended to the log."""
    found = [e["row"] for e in load_log(log, settings) if "row" in e and e["row"]["method"] == method]
    if found:
        return found[0]
    row = run_isolated(method, "peftedu", settings) if isolate else run_one(method, "peftedu", settings)
    row["forgetting"] = baseline["retention"] - row["retention"]
    _append_log(log, {"row": row}, settings)
    return row


def run_grid(settings: Settings, methods: list[str], log: Path, progress: bool = True, factors=None,
             isolate: bool = True) -> dict:
    """Every run of the grid (reusing the log's), then :func:`aggregate`; returns the result to write.

    ``factors``: the learning-rate multipliers (default :data:`GRID_FACTORS`), the same for every method."""
    factors = tuple(factors or GRID_FACTORS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; the grid knows {list(METHODS)}.")
    base_settings = replace(settings, seed=GRID_SEEDS[0], lr=None, validation=True, delta_w=False)
    logged = load_log(log, base_settings)
    baseline = next((e["baseline"] for e in logged if "baseline" in e), None)
    if baseline is None:
        baseline = baseline_scores(base_settings)
        _append_log(log, {"baseline": baseline}, base_settings)

    def run(method: str, lr: float, seed: int) -> dict:
        one = replace(base_settings, lr=lr, seed=seed, delta_w=METHODS[method].kind == "full")
        return logged_run(method, one, log, baseline, isolate)

    rows = []
    bar = tqdm(total=len(methods) * (len(factors) + len(GRID_SEEDS) - 1), desc="grid", disable=not progress)
    for method in methods:
        default = METHODS[method].lr
        tuning = []
        for lr in grid_lrs(default, factors):
            bar.set_postfix(run=f"{method} lr={lr:g} seed={GRID_SEEDS[0]}")
            tuning.append(run(method, lr, GRID_SEEDS[0]))
            bar.update()
        chosen = choose_lr(tuning, default)
        rows += tuning
        for seed in GRID_SEEDS[1:]:
            bar.set_postfix(run=f"{method} lr={chosen:g} seed={seed}")
            rows.append(run(method, chosen, seed))
            bar.update()
    bar.close()
    table = aggregate(rows, methods, {m: METHODS[m].lr for m in methods})
    full = next((r for r in rows if r["method"] == "full" and r.get("delta_w") and
                 r["lr"] == next(t["lr"] for t in table if t["method"] == "full")), None)
    # the runs keep each matrix's numbers; the cumulative-energy curves only for the chosen full fine-tuning run
    runs = [{**r, "delta_w": {name: {k: v for k, v in m.items() if k != "curve"} for name, m in r["delta_w"].items()}}
            if r.get("delta_w") else r for r in rows]
    return {"task": settings.task, "settings": base_settings.__dict__, "baseline": baseline, "table": table,
            "factors": list(factors), "seeds": list(GRID_SEEDS), "steps": rows[0]["steps"], "runs": runs,
            "delta_w": None if full is None else {"lr": full["lr"], "seed": full["seed"],
                                                   "summary": lowrank.summarize(full["delta_w"]),
                                                   "matrices": full["delta_w"]},
            "model": rows[0]["model"], "device": rows[0]["device"], "date": time.strftime("%Y-%m-%d")}


def markdown(result: dict) -> str:
    """The ranking table: score and forgetting as mean ± sd over the seeds, and who beats whom beyond noise."""
    lines = [f"# Grid: {result['model']} on `{result['task']}`, {result['steps']} steps, {result['device']}", "",
             f"Learning rate: each method's default × {', '.join(f'{f:.3g}' for f in result['factors'])}, chosen on "
             f"validation (seed {result['seeds'][0]}); then seeds {result['seeds']} at that rate, scored on test. "
             f"Base model: score {result['baseline']['score']:.2f}, retention {result['baseline']['retention']:.2f}.",
             "", "| method | trainable | lr (validation scores) | score | forgetting | beats beyond noise |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in result["table"]:
        tried = ", ".join(f"{lr}: {v:.2f}" for lr, v in row["validation"].items())
        edge = " (edge)" if row["lr_at_edge"] else ""
        lines.append(f"| {row['method']} | {row['trainable']:,} | **{row['lr']:g}**{edge} ({tried}) | "
                     f"{row['score_mean']:.2f} ± {row['score_sd']:.2f} | "
                     f"{row['forgetting_mean']:+.2f} ± {row['forgetting_sd']:.2f} | {', '.join(row['beats']) or '–'} |")
    return "\n".join(lines) + "\n"


def plot(result: dict) -> Figure:
    """Test score and forgetting, mean ± sd over the seeds, one bar pair per method."""
    table = result["table"]
    fig = Figure(figsize=(9, 3.6))
    for ax, key, label in zip(fig.subplots(1, 2), ("score", "forgetting"),
                              (f"{result['task']} test score", "forgetting (base retention − after)")):
        names = [row["method"] for row in table]
        ax.bar(names, [row[f"{key}_mean"] for row in table], yerr=[row[f"{key}_sd"] for row in table], capsize=4,
               color="#4c72b0" if key == "score" else "#dd8452")
        for i, row in enumerate(table):
            ax.scatter([i] * row["seeds"], row[f"{key}s"], color="black", s=10, zorder=3)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"mean ± sd over {len(result['seeds'])} seeds (dots: each seed), learning rate chosen on validation")
    fig.tight_layout()
    return fig


def plot_tradeoff(result: dict) -> Figure:
    """Learning against forgetting: every seed-0 run of the grid (one point per learning rate, joined per method,
    the larger marker the chosen rate). Biderman et al. (2024) draw the same picture for LoRA and full fine-tuning."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    chosen = {row["method"]: row["lr"] for row in result["table"]}
    for method in chosen:
        runs = sorted((r for r in result["runs"] if r["method"] == method and r["seed"] == result["seeds"][0]),
                      key=lambda r: r["lr"])
        line, = ax.plot([r["score"] for r in runs], [r["forgetting"] for r in runs], marker="o", ms=4, label=method)
        best = next(r for r in runs if r["lr"] == chosen[method])
        ax.scatter([best["score"]], [best["forgetting"]], s=80, color=line.get_color(), zorder=3)
    ax.set_xlabel(f"{result['task']} test score (seed {result['seeds'][0]})")
    ax.set_ylabel("forgetting (base retention − after)")
    ax.set_title("three learning rates per method (large dot: chosen on validation)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_delta_w(result: dict) -> Figure:
    """Cumulative energy of ΔW's singular directions, per matrix kind (median), against a random matrix."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    by_kind: dict[str, list[list[float]]] = {}
    for name, report in result["delta_w"]["matrices"].items():
        by_kind.setdefault(lowrank.kind_of(name), []).append(report["curve"])
    for kind, curves in by_kind.items():
        ax.plot(range(1, len(curves[0]) + 1), [statistics.median(c[i] for c in curves) for i in range(len(curves[0]))],
                label=kind)
    ax.axvline(lowrank.TOP_K, color="grey", linestyle=":", label=f"r = {lowrank.TOP_K}")
    noise = statistics.median(r["random_top_k_energy"] for r in result["delta_w"]["matrices"].values())
    ax.axhline(noise, color="grey", linestyle="--", label=f"random matrix: top {lowrank.TOP_K}")
    ax.set_xlabel("singular directions kept")
    ax.set_ylabel("share of ‖ΔW‖² (median over layers)")
    ax.set_title("full fine-tuning's update: how much of it lies in the top directions")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def write_grid(result: dict, out: Path) -> dict[str, Path]:
    """``grid_<task>.json``, ``.md`` and ``.png`` (and ``delta_w_<task>.png`` when the full run kept ΔW)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"grid_{result['task']}"
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["md"].write_text(markdown(result))
    paths["png"] = out / f"{stem}.png"
    plot(result).savefig(paths["png"], dpi=110)
    paths["tradeoff"] = out / f"{stem}_tradeoff.png"
    plot_tradeoff(result).savefig(paths["tradeoff"], dpi=110)
    if result["delta_w"]:
        paths["delta_w"] = out / f"delta_w_{result['task']}.png"
        plot_delta_w(result).savefig(paths["delta_w"], dpi=110)
    return paths


def main(args) -> None:
    """``python -m peftedu showdown --grid``: run (or resume) the grid and write ``results/grid_<task>.*``.

    ``--smoke``: a tiny random model, 2 steps, 4 rows, full fine-tuning and LoRA (seconds a run; CI)."""
    task = args.task if args.task != "topic" else "lexicon"  # the grid's task is lexicon unless one is named
    if args.smoke:
        settings = Settings(model="tiny-random", task=task, profile="quick", max_steps=2, eval_rows=4,
                            latency_rows=2, latency_repeats=1, device="cpu")
    else:
        settings = Settings(model=args.model or os.environ.get("PEFTEDU_MODEL"), task=task,
                            profile=get_profile(args.profile).name, device=args.device,
                            max_steps=args.max_steps or GRID_STEPS)
    methods = args.methods or (["full", "lora"] if args.smoke else list(GRID_METHODS))
    log = Path(args.log or Path(args.out) / f"grid_{task}_runs.jsonl")
    start = time.perf_counter()
    result = run_grid(settings, methods, log, isolate=not args.smoke)
    result["command"] = "python -m peftedu showdown " + " ".join(sys.argv[2:])
    paths = write_grid(result, Path(args.out))
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({time.perf_counter() - start:,.0f} s)")


__all__ = ["GRID_FACTORS", "GRID_METHODS", "GRID_SEEDS", "GRID_STEPS", "aggregate", "choose_lr", "grid_lrs",
           "logged_run", "markdown", "mean_sd", "run_grid", "separated", "write_grid"]
