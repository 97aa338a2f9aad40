"""Execute the notebook series on any model and device, without comparing outputs; log time and peak memory.

nbval checks the committed outputs of the default model on the CPU. This runner checks the other promise:
that every cell *runs* with another model (``--model``: an alias, a hub id or a model folder, e.g. one written
by ``scripts/random_model.py``) and another profile or device. For each notebook it records whether every cell
ran, the first error, the wall time, the kernel's peak resident memory and, on a GPU, the peak memory that
torch allocated.

    python scripts/run_series.py --model /tmp/tiny-qwen2 --max-steps 3          # CI: a Qwen2-style model
    PEFTEDU_PROFILE=full python scripts/run_series.py --model qwen2.5-1.5b --parallel 4 --log results/series.md

Exit status 1 when any notebook failed. ``--max-steps`` caps every training run (``PEFTEDU_MAX_STEPS``), for a
pass that checks only that the code runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Appended to each notebook: what the kernel used, as one JSON line.
PEAK_CELL = """
import json as _json, resource as _resource, torch as _torch
_peak = {"rss_mb": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024}
if _torch.cuda.is_available():
    _peak["cuda_mb"] = _torch.cuda.max_memory_allocated() / 2**20
    _peak["gpu"] = _torch.cuda.get_device_name()
print("PEAK " + _json.dumps(_peak))
"""


def run_one(path: Path, timeout: int, kernel: str) -> dict:
    """Execute one notebook in a fresh kernel (called in a child process, so notebooks can run side by side)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    record = {"notebook": path.name, "ok": True, "error": None, "cell": None}
    try:
        client.execute()
    except CellExecutionError as err:
        record["ok"] = False
        text = ANSI.sub("", str(err))
        record["error"] = next((line for line in reversed(text.splitlines()) if re.match(r"\w+(Error|Exception)\b", line)),
                               text.strip().splitlines()[-1] if text.strip() else "CellExecutionError")
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        for index, cell in enumerate(code_cells):
            if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
                record["cell"] = index
                record["source"] = cell.source.strip().splitlines()[:3]
                break
    except Exception as err:  # a dead kernel, a timeout
        record.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    record["seconds"] = round(time.perf_counter() - start, 1)
    last = nb.cells[-1].get("outputs", [])
    for out in last:
        for line in out.get("text", "").splitlines():
            if line.startswith("PEAK "):
                record.update(json.loads(line[5:]))
    return record


def child(path: str, timeout: int, kernel: str, env: dict) -> dict:
    """Run ``run_one`` in a separate Python process with the pass's environment."""
    out = subprocess.run([sys.executable, __file__, "--one", path, "--timeout", str(timeout), "--kernel", kernel],
                         env=env, capture_output=True, text=True)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"notebook": Path(path).name, "ok": False, "error": (out.stderr.strip().splitlines() or ["no output"])[-1],
            "cell": None, "seconds": None}


def table(records: list[dict], header: str) -> str:
    lines = [header, "", "| notebook | ran | seconds | peak RSS MB | peak CUDA MB | first error |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in records:
        cuda = f"{r['cuda_mb']:,.0f}" if r.get("cuda_mb") is not None else "–"
        rss = f"{r['rss_mb']:,.0f}" if r.get("rss_mb") is not None else "–"
        err = "" if r["ok"] else f"cell {r.get('cell')}: {r['error']}".replace("|", "\\|")
        lines.append(f"| {r['notebook']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {rss} | {cuda} | {err} |")
    total = sum(r["seconds"] or 0 for r in records)
    lines += ["", f"{sum(r['ok'] for r in records)} of {len(records)} notebooks ran every cell; "
                  f"notebook time summed: {total:,.0f} s."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: notebooks/[0-9][0-9]_*.ipynb)")
    parser.add_argument("--model", help="PEFTEDU_MODEL for every notebook (default: the environment's)")
    parser.add_argument("--max-steps", type=int, help="cap every training run at this many steps")
    parser.add_argument("--parallel", type=int, default=1, help="notebooks run side by side (default 1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3: this Python)")
    parser.add_argument("--log", help="also write the Markdown table to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(Path(args.one), args.timeout, args.kernel)))
        return 0
    env = dict(os.environ)
    if args.model:
        env["PEFTEDU_MODEL"] = args.model
    if args.max_steps:
        env["PEFTEDU_MAX_STEPS"] = str(args.max_steps)
    paths = [Path(p).resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    start = time.perf_counter()
    records = []
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = [pool.submit(child, str(p), args.timeout, args.kernel, env) for p in paths]
        for future in as_completed(futures):  # each notebook is reported as soon as it ends
            record = future.result()
            records.append(record)
            print(f"{record['notebook']}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s"
                  + ("" if record["ok"] else f" (cell {record.get('cell')}: {record['error']})"), flush=True)
    records.sort(key=lambda r: r["notebook"])
    model = env.get("PEFTEDU_MODEL") or "the default model"
    header = (f"# The series on {Path(model).name if Path(model).exists() else model}, profile "
              f"{env.get('PEFTEDU_PROFILE', 'quick')}" + (f", at most {args.max_steps} steps per run" if args.max_steps else "")
              + f"\n\n{len(paths)} notebooks, {args.parallel} at a time; wall time {time.perf_counter() - start:,.0f} s.")
    text = table(records, header)
    print(text)
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.log).write_text(text + "\n")
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
