"""The peftedu command line.

commands:
  prepare    convert the bundled default model once into the fast local cache (scripts/setup.sh runs it)
  data       regenerate data/tasks/ from the seeded generators (byte for byte)
  tour       the main job: score the base model zero-shot, train a LoRA in the current profile, score it
             again, and show the first test row before and after
  showdown   every method trained on the same task, budget and seed, side by side with HF peft; writes
             results/showdown_*.{csv,md,json,png} (--smoke: a tiny random model, about 2 minutes, for CI)

settings (an option wins over its variable):
  PEFTEDU_MODEL    the base model: an alias, a local folder or an org/name hub id (default smollm2-135m)
  PEFTEDU_PROFILE  quick (CPU-sized) or full (GPU-sized), any case (default quick)

Run "python -m peftedu COMMAND --help" for the options of each command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import LoraConfig, get_peft_model
from .course import lora_study, showdown, showdown_grid
from .course.data import load_task, write_tasks
from .course.models import DEFAULT_MODEL, MODEL_ALIASES, check_model_name, load_base, resolve_source
from .course.evaluation import evaluate
from .course.training import PROFILES, get_profile, train

TASKS = ("topic", "extract")  # the tasks a LoRA is trained on (retention is a probe, never trained)
MODEL_HELP = (f"an alias ({', '.join(MODEL_ALIASES)}), a local model folder or an org/name hub id "
              f"(default: PEFTEDU_MODEL, else {DEFAULT_MODEL})")
PROFILE_HELP = f"one of {', '.join(PROFILES)}, any case (default: PEFTEDU_PROFILE, else quick)"


def profile_name(text: str) -> str:
    """argparse type: a profile name in any case; anything else is a usage error (exit 2)."""
    if text.strip().lower() not in PROFILES:
        raise argparse.ArgumentTypeError(f"unknown profile {text!r}; choose one of {', '.join(PROFILES)} (any case)")
    return text.strip().lower()


def add_model_and_profile(parser, profile: bool = True) -> None:
    parser.add_argument("--model", default=None, metavar="NAME", help=MODEL_HELP)
    if profile:
        parser.add_argument("--profile", default=None, type=profile_name, metavar="PROFILE", help=PROFILE_HELP)


def cmd_prepare(args) -> None:
    start = time.perf_counter()
    source = resolve_source(args.model)
    model, _ = load_base(args.model, device="cpu")
    print(f"model ready: {source} ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{time.perf_counter() - start:.1f} s)")


def cmd_data(args) -> None:
    for task, files in write_tasks(args.root).items():
        print(task, {split: str(path) for split, path in files.items()})


def tour_results(model_name=None, profile=None, tasks=TASKS, lora_r=8, progress=True, report=None) -> dict:
    """Baseline -> LoRA -> after, on each task; returns every measured number.

    ``report(task, numbers)`` is called as soon as a task is done (the tour prints each task then).
    """
    profile = get_profile(profile)
    results = {"profile": profile.name, "tasks": {}}
    for task in tasks:
        model, tokenizer = load_base(model_name)
        results["model"] = model.name_or_path
        if progress:
            print(f"[{task}] scoring the base model zero-shot", file=sys.stderr, flush=True)
        before = evaluate(model, tokenizer, task, profile=profile, progress=progress)
        peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
                                                      if hasattr(model.config, "num_key_value_heads")
                                                      else "all-linear"))
        trainable, total = peft_model.get_nb_trainable_parameters()
        history = train(peft_model, tokenizer, load_task(task, "train"), profile=profile, progress=progress)
        if progress:
            print(f"[{task}] scoring the LoRA model", file=sys.stderr, flush=True)
        after = evaluate(peft_model, tokenizer, task, profile=profile, progress=progress)
        first_before, first_after = before["examples"][0], after["examples"][0]  # the first test row, whatever it gives
        results["tasks"][task] = numbers = {
            "zero_shot": before["score"], "after_lora": after["score"], "n_eval": after["n"],
            "trainable_params": trainable, "total_params": total,
            "train_steps": history.steps, "train_wall_s": history.wall_time_s,
            "eval_wall_s_before": before["wall_time_s"], "eval_wall_s_after": after["wall_time_s"],
            "final_loss": history.loss[-1], "first_loss": history.loss[0],
            "example": {"input": first_after["input"], "reference": first_after["reference"],
                        "before": first_before["prediction"], "before_correct": first_before["correct"],
                        "after": first_after["prediction"], "after_correct": first_after["correct"]},
        }
        if report is not None:
            report(task, numbers)
    return results


def print_task(task: str, r: dict) -> None:
    print(f"\n== task {task} (first {r['n_eval']} test rows) ==")
    print(f"LoRA trainable params: {r['trainable_params']:,} of {r['total_params']:,} "
          f"({100 * r['trainable_params'] / r['total_params']:.4f}%)")
    print(f"zero-shot score : {r['zero_shot']:.3f}   (evaluation {r['eval_wall_s_before']:.1f} s)")
    print(f"after LoRA score: {r['after_lora']:.3f}   (training {r['train_steps']} steps, "
          f"{r['train_wall_s']:.1f} s; loss {r['first_loss']:.3f} -> {r['final_loss']:.3f})")
    ex = r["example"]
    verdict = {True: "right", False: "wrong"}
    print(f"first test row: {ex['input']}\nreference : {ex['reference']}\n"
          f"before    : {ex['before']!r} ({verdict[ex['before_correct']]})\n"
          f"after     : {ex['after']!r} ({verdict[ex['after_correct']]})", flush=True)


def cmd_tour(args) -> None:
    results = tour_results(args.model, args.profile, tasks=args.tasks, report=print_task)
    print(f"\nmodel: {results['model']}   profile: {results['profile']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m peftedu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("prepare", help="convert the default model into the local cache",
                       description="Load a model once (the default is converted from its GGUF file into "
                                   "PEFTEDU_CACHE, default ~/.cache/peftedu) and report its size.")
    add_model_and_profile(p, profile=False)
    p.set_defaults(func=cmd_prepare, parser=p)
    p = sub.add_parser("data", help="regenerate data/tasks",
                       description="Regenerate the bundled tasks from their seeded generators (byte for byte).")
    p.add_argument("--root", default=None, metavar="FOLDER",
                   help="where to write the tasks (default: the repository's data/tasks, or PEFTEDU_DATA/tasks)")
    p.set_defaults(func=cmd_data, parser=p)
    p = sub.add_parser("tour", help="baseline, LoRA, after: the main job",
                       description="Score the base model zero-shot, train a LoRA (r=8) in the profile, score it "
                                   "again, and show the first test row before and after, for each task.")
    add_model_and_profile(p)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK",
                   help=f"tasks to train and score, from {', '.join(TASKS)} (default: both)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the measured numbers to this JSON file")
    p.set_defaults(func=cmd_tour, parser=p)
    p = sub.add_parser("showdown", help="every method side by side, measured (results/)",
                       description="Train every method on the same task, model, token budget and seed, each in "
                                   "its own process, and each method HF peft also has a second time with peft.",
)
    add_model_and_profile(p)
    showdown.add_arguments(p)
    p.set_defaults(func=run_showdown, parser=p)
    return parser


def run_showdown(args) -> None:
    """``showdown``: the side-by-side table, or with ``--grid`` the seeds × learning rates comparison, or with
    ``--study`` LoRA's rank sweep and tips."""
    if args.grid and args.study:
        args.parser.error("--grid and --study are two commands: run --grid first, then --study.")
    (showdown_grid.main if args.grid else lora_study.main if args.study else showdown.main)(args)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:  # settings that come from the environment are checked here too: a usage error, not a traceback
        if "profile" in args:
            args.profile = get_profile(args.profile).name
        if "model" in args and not getattr(args, "smoke", False):
            check_model_name(args.model)
    except ValueError as err:
        args.parser.error(str(err))
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
