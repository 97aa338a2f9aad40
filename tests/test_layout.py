"""The package's layout is its architecture: the PEFT library at the top of ``peftedu/``, the course tools in
``peftedu/course/``. The course may import the library; the library never imports the course."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "peftedu"
LIBRARY = sorted(p for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
COURSE = sorted((PACKAGE / "course").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as an absolute dotted name (relative imports resolved)."""
    package = "peftedu" if path.parent == PACKAGE else "peftedu.course"
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
    assert {p.stem for p in LIBRARY} >= {"config", "tuners", "peft_model", "counting", "merging", "quant", "lora"}
    assert {p.stem for p in COURSE} >= {"models", "data", "training", "showdown", "interview"}


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_library_never_imports_the_course(path):
    course = {m for m in _imported_modules(path) if m == "peftedu.course" or m.startswith("peftedu.course.")}
    assert not course, f"peftedu/{path.name} (library) imports {sorted(course)} (course tools); move the code or invert it"


def test_the_resolver_sees_relative_imports():
    """The check above would pass vacuously if relative imports were misread."""
    assert "peftedu.course.models" in _imported_modules(PACKAGE / "course" / "training.py") or \
        "peftedu.course.data" in _imported_modules(PACKAGE / "course" / "training.py")
    assert "peftedu.config" in _imported_modules(PACKAGE / "lora.py")
    assert "peftedu.config" in _imported_modules(PACKAGE / "course" / "prefix_shapes.py")
