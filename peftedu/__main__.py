"""Command line: ``python -m peftedu {prepare,data,tour,showdown}``.

* ``prepare`` -- convert the bundled GGUF model once into the fast local cache (run by set-up).
* ``data``    -- regenerate ``data/tasks/`` from the seeded generators (byte-identical).
* ``tour``    -- the main job: load the base model, score it zero-shot, train a LoRA in the current
  profile (``PEFTEDU_PROFILE``, default ``quick``), score it again and show a generation before/after.
* ``showdown`` -- every method trained on the same task, budget and seed, side by side with HF peft;
  writes ``results/showdown_*.{csv,md,json,png}`` (``--smoke``: seconds, for CI). See :mod:`peftedu.showdown`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def cmd_prepare(args) -> None:
    from .models import load_base, resolve_source

    start = time.perf_counter()
    source = resolve_source(args.model)
    model, _ = load_base(args.model, device="cpu")
    print(f"model ready: {source} ({sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{time.perf_counter() - start:.1f} s)")


def cmd_data(args) -> None:
    from .data import write_tasks

    for task, files in write_tasks(args.root).items():
        print(task, {split: str(path) for split, path in files.items()})


def tour_results(model_name=None, profile=None, tasks=("topic", "extract"), lora_r=8, progress=True) -> dict:
    """Baseline -> LoRA -> after, on each task; returns every measured number (the tour prints them)."""
    from . import LoraConfig, get_peft_model
    from .data import load_task
    from .models import load_base
    from .training import evaluate, get_profile, train

    profile = get_profile(profile)
    results = {"profile": profile.name, "tasks": {}}
    for task in tasks:
        model, tokenizer = load_base(model_name)
        results["model"] = model.name_or_path
        before = evaluate(model, tokenizer, task, profile=profile)
        peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
                                                      if hasattr(model.config, "num_key_value_heads")
                                                      else "all-linear"))
        trainable, total = peft_model.get_nb_trainable_parameters()
        history = train(peft_model, tokenizer, load_task(task, "train"), profile=profile, progress=progress)
        after = evaluate(peft_model, tokenizer, task, profile=profile)
        results["tasks"][task] = {
            "zero_shot": before["score"], "after_lora": after["score"], "n_eval": after["n"],
            "trainable_params": trainable, "total_params": total,
            "train_steps": history.steps, "train_wall_s": history.wall_time_s,
            "eval_wall_s_before": before["wall_time_s"], "eval_wall_s_after": after["wall_time_s"],
            "final_loss": history.loss[-1], "first_loss": history.loss[0],
            "example": {"input": after["examples"][0]["input"], "reference": after["examples"][0]["reference"],
                        "before": before["examples"][0]["prediction"], "after": after["examples"][0]["prediction"]},
        }
    return results


def cmd_tour(args) -> None:
    results = tour_results(args.model, args.profile, tasks=args.tasks)
    print(f"\nmodel: {results['model']}   profile: {results['profile']}")
    for task, r in results["tasks"].items():
        print(f"\n== task {task} (first {r['n_eval']} test rows) ==")
        print(f"LoRA trainable params: {r['trainable_params']:,} of {r['total_params']:,} "
              f"({100 * r['trainable_params'] / r['total_params']:.4f}%)")
        print(f"zero-shot score : {r['zero_shot']:.3f}   (evaluation {r['eval_wall_s_before']:.1f} s)")
        print(f"after LoRA score: {r['after_lora']:.3f}   (training {r['train_steps']} steps, "
              f"{r['train_wall_s']:.1f} s; loss {r['first_loss']:.3f} -> {r['final_loss']:.3f})")
        ex = r["example"]
        print(f"input     : {ex['input']}\nreference : {ex['reference']}\n"
              f"before    : {ex['before']!r}\nafter     : {ex['after']!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peftedu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert the default model into the local cache")
    p.add_argument("--model", default=None)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("data", help="regenerate data/tasks")
    p.add_argument("--root", default=None)
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("tour", help="baseline, LoRA, after: the main job")
    p.add_argument("--model", default=None, help="alias, hub id or folder (default: PEFTEDU_MODEL or smollm2-135m)")
    p.add_argument("--profile", default=None, help="quick or full (default: PEFTEDU_PROFILE or quick)")
    p.add_argument("--tasks", nargs="+", default=["topic", "extract"])
    p.add_argument("--json", default=None, help="also write the measured numbers to this JSON file")
    p.set_defaults(func=cmd_tour)
    from . import showdown

    p = sub.add_parser("showdown", help="every method side by side, measured (results/)")
    showdown.add_arguments(p)
    p.set_defaults(func=showdown.main)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
