"""The showdown's results written out: peftedu ÷ HF peft ratios, the CSV (every row, both implementations), the
Markdown table (peftedu rows and the ratios), the JSON, and three figures (score against trainable parameters,
peak training memory, seconds per step)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure

from .showdown_serving import serving_verdict

COLUMNS = ["method", "impl", "family", "trainable", "trainable_pct", "peak_memory_mb", "time_per_step_s",
           "tokens_per_s", "latency_unmerged_rel", "latency_merged_rel", "score", "retention", "forgetting",
           "time_ratio_vs_peft", "memory_ratio_vs_peft", "peft_score", "mfu", "loss_first", "loss_last", "lr",
           "steps", "tokens", "eval_rows", "device", "dtype", "model", "weights", "note"]
MD_COLUMNS = [("method", "method"), ("trainable", "trainable"), ("trainable_pct", "%"),
              ("peak_memory_mb", "peak train MB"), ("time_per_step_s", "s/step"), ("tokens_per_s", "tokens/s"),
              ("latency_unmerged_rel", "latency unmerged"), ("latency_merged_rel", "latency merged"),
              ("score", "score"), ("forgetting", "forgetting"), ("peft_score", "peft score"),
              ("time_ratio_vs_peft", "time ÷ peft"), ("memory_ratio_vs_peft", "memory ÷ peft"), ("mfu", "MFU")]


def compare_with_peft(rows: list[dict], repeats: list[dict] = ()) -> None:
    """Add peftedu/peft ratios to each peftedu row that has a peft twin.

    ``repeats``: more runs of the same pairs (``Settings.repeat`` 1, 2, ...; their order alternated), so each
    time and memory ratio is the median over the pairs, ``ours_k / peft_k``: one slow run on a busy machine moves
    a median of three pairs far less than it moves a single ratio. The per-pair ratios are kept when there is
    more than one pair."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for row in list(rows) + list(repeats):
        runs.setdefault((row["method"], row["impl"]), []).append(row)
    for row in rows:
        if row["impl"] != "peftedu" or (row["method"], "peft") not in runs:
            continue
        by_repeat = lambda impl: sorted(runs[(row["method"], impl)], key=lambda r: r.get("repeat", 0))
        pairs = list(zip(by_repeat("peftedu"), by_repeat("peft")))
        for column, key in (("time_per_step_s", "time"), ("peak_memory_mb", "memory")):
            ratios = [ours[column] / theirs[column] for ours, theirs in pairs if ours[column] and theirs[column]]
            if ratios:
                row[f"{key}_ratio_vs_peft"] = statistics.median(ratios)
                if len(ratios) > 1:
                    row[f"{key}_ratios_vs_peft"] = ratios
        row["peft_score"] = pairs[0][1]["score"]


def _fmt(value, column: str) -> str:
    if value is None or value == "":
        return "–"
    if column == "trainable":
        return f"{value:,}"
    if column == "trainable_pct":
        return f"{value:.4f}%"
    if column in ("score", "retention", "forgetting", "peft_score"):
        return f"{value:+.2f}" if column == "forgetting" else f"{value:.2f}"
    if column in ("time_ratio_vs_peft", "memory_ratio_vs_peft", "latency_unmerged_rel", "latency_merged_rel"):
        return f"{value:.2f}"
    if column == "peak_memory_mb":
        return f"{value:,.0f}"
    if column == "time_per_step_s":
        return f"{value:.3f}"
    if column == "tokens_per_s":
        return f"{value:,.0f}"
    if column == "mfu":
        return f"{100 * value:.1f}%"
    return str(value)


def write_results(result: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """CSV (every row, both implementations), Markdown (peftedu rows + ratios), JSON, and three plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{stem}.csv", "md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    write_csv(result["rows"], paths["csv"])
    paths["json"].write_text(json.dumps(result, indent=2))
    paths["md"].write_text(markdown(result))
    ours = [r for r in result["rows"] if r["impl"] == "peftedu"]
    if any(r["score"] is not None for r in ours):  # (a random-weights run has no scores to plot)
        paths["plot_score"] = plot_score(result, out_dir / f"{stem}_score_vs_params.png")
    for key, column, label in (("plot_memory", "peak_memory_mb", "peak training memory (MB)"),
                               ("plot_time", "time_per_step_s", "seconds per optimizer step")):
        paths[key] = plot_against_peft(result, column, label, out_dir / f"{stem}_{column.split('_')[0]}.png")
    return paths


def write_csv(rows: list[dict], path: Path) -> None:
    """Every row, both implementations, in :data:`COLUMNS` order (a missing value is an empty cell)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in COLUMNS})


def markdown(result: dict) -> str:
    """The Markdown report: how it was produced, the peftedu rows with their peft ratios, serving, notes."""
    ours = [r for r in result["rows"] if r["impl"] == "peftedu"]
    paired = [r for r in ours if len(r.get("time_ratios_vs_peft", ())) > 1]  # with --repeats
    per_pair = "; ".join(f"{r['method']} " + ", ".join(f"{x:.2f}" for x in r["time_ratios_vs_peft"]) for r in paired)
    counts = {r["method"]: len(r["time_ratios_vs_peft"]) for r in paired}
    usual = statistics.mode(counts.values()) if counts else 0
    more = "".join(f", {m}'s of {n}" for m, n in counts.items() if n != usual)  # a longer run for some methods
    pairs = (f"; each the median of {usual} interleaved pairs{more} (the order flipped every "
             f"other pair), per pair: {per_pair}") if paired else ""
    s, base = result["settings"], result["baseline"]
    lines = [f"# Showdown: {result['model']} on `{s['task']}`, profile `{s['profile']}`, {result['device']}", "",
             f"Produced by `{result['command']}` on {result['date']} ({result['weights']} weights). "
             f"Every method: {ours[0]['steps']} optimizer steps, the same {ours[0]['tokens']:,} training tokens in "
             f"the same order (seed {s['seed']}); "
             + (f"score on the first {base['eval_rows']} test rows. Base model: score {base['score']:.2f}, "
                f"retention {base['retention']:.2f}. Forgetting = base retention minus retention after training. "
                if base["score"] is not None else
                "no scores: random weights were never pretrained, so this table measures cost only. ")
             + "Latency: one forward pass over "
             f"{s['latency_rows']} test prompts, relative to the base model in the same process "
             f"({result.get('torch_threads', '?')} torch thread(s)). "
             f"Ratios: peftedu ÷ HF peft (same config, same run), for the methods peft has{pairs}.", "",
             "| " + " | ".join(h for _, h in MD_COLUMNS) + " |", "|" + " --- |" * len(MD_COLUMNS)]
    for row in ours:
        lines.append("| " + " | ".join(_fmt(row.get(c), c) for c, _ in MD_COLUMNS) + " |")
    serving = result.get("serving")
    if serving:
        lines += ["", f"**Serving {serving['adapters']} LoRA adapters** ({serving['requests']} requests): one mixed "
                  f"batch (each row gathers its own adapter) vs switching adapters request by request — "
                  f"{serving_verdict(serving)}; the mixed batch is "
                  f"{serving['throughput_ratio']:.1f}x the throughput."]
    notes = sorted({(r["method"], r["note"]) for r in ours if r.get("note")})
    if notes:
        lines += ["", "Notes: " + "; ".join(f"{m}: {n}" for m, n in notes) + "."]
    return "\n".join(lines) + "\n"


def plot_score(result: dict, path: Path) -> Path:
    """Score against trainable parameters (log scale), one point per scored peftedu row; the base model dashed."""
    scored = [r for r in result["rows"] if r["impl"] == "peftedu" and r["score"] is not None]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for row in scored:
        ax.scatter(row["trainable"], row["score"], s=30)
        ax.annotate(row["method"], (row["trainable"], row["score"]), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    ax.axhline(result["baseline"]["score"], color="grey", ls="--", lw=1, label="base model")
    ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel=f"score on {result['settings']['task']}",
           title=f"score against trainable parameters ({result['device']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_against_peft(result: dict, column: str, label: str, path: Path) -> Path:
    """One bar per peftedu row of ``column`` (memory or time), HF peft's twin marked on it where there is one."""
    rows = result["rows"]
    ours = [r for r in rows if r["impl"] == "peftedu"]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    names = [r["method"] for r in ours]
    ax.barh(names, [r[column] or 0 for r in ours], label="peftedu")
    twins = {r["method"]: r for r in rows if r["impl"] == "peft" and r[column]}
    if twins:  # (a category axis cannot place an all-NaN series, so a run without twins draws none)
        ax.scatter([twins[n][column] if n in twins else float("nan") for n in names], names,
                   color="black", marker="|", s=200, label="HF peft", zorder=3)
    ax.set(xlabel=label, title=f"{label} ({result['device']})")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
