"""The package's layout is its architecture: the PEFT library at the top of ``peftedu/``, the course tools in
``peftedu/course/``. The course may import the library; the library never imports the course."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "peftedu"
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "course" not in p.relative_to(PACKAGE).parts
                 and p.relative_to(PACKAGE).as_posix() not in ("__init__.py", "__main__.py"))
COURSE = sorted((PACKAGE / "course").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as an absolute dotted name (relative imports resolved)."""
    package = ".".join(("peftedu",) + path.parent.relative_to(PACKAGE).parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x
                    names.update(f"{module}.{alias.name}" for alias in node.names)
                else:
                    names.add(module)
            else:
                names.add(node.module)
    return names


def test_the_library_and_the_course_are_where_the_layout_says():
    assert {p.relative_to(PACKAGE).as_posix() for p in LIBRARY} >= {
        "config.py", "tuners.py", "peft_model.py", "counting.py", "merging.py", "quant/functional.py", "lora.py"}
    assert {p.stem for p in COURSE} >= {"models", "data", "training", "showdown", "interview"}


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_the_library_never_imports_the_course(path):
    course = {m for m in _imported_modules(path) if m == "peftedu.course" or m.startswith("peftedu.course.")}
    assert not course, (f"peftedu/{path.relative_to(PACKAGE).as_posix()} (library) imports {sorted(course)} "
                        "(course tools); move the code or invert it")


def test_the_resolver_sees_relative_imports():
    """The check above would pass vacuously if relative imports were misread."""
    assert "peftedu.course.tokenization" in _imported_modules(PACKAGE / "course" / "training.py")
    assert "peftedu.config" in _imported_modules(PACKAGE / "lora.py")
    assert "peftedu.config" in _imported_modules(PACKAGE / "course" / "prefix_shapes.py")
    assert "peftedu.config" in _imported_modules(PACKAGE / "quant" / "linear4bit.py")


#: About 400 lines: a module a reader can hold in their head (issue 15). A module that outgrows it does two jobs.
MAX_LINES = 410


@pytest.mark.parametrize("path", LIBRARY + COURSE, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_every_module_is_short_enough_to_read_in_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"peftedu/{path.relative_to(PACKAGE).as_posix()} has {lines} lines (> {MAX_LINES}): split it by job"


def test_one_list_of_shipped_architectures():
    """The explorers, the shape walkthrough and the loaders offer the same models: the configs in data/."""
    from peftedu.course import explorers, models, prefix_shapes

    shipped = {p.stem for p in (PACKAGE.parent / "data" / "model_configs").glob("*.json")}
    assert set(models.SHIPPED_ARCHITECTURES) == set(models.MODEL_ALIASES) == shipped
    assert explorers.lora_rank_explorer.__defaults__[0] is models.SHIPPED_ARCHITECTURES
    assert prefix_shapes.prefix_shape_explorer.__defaults__[0] is models.SHIPPED_ARCHITECTURES
