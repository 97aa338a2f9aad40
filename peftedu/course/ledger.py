"""The source ledger (勘误表): every claim of the five source tutorials, checked against the series.

The data lives in ``data/source_ledger.json``, a list of rows, one per claim::

    {"source": "002",                       # which tutorial: ../shared/sources/002_*.txt
     "quote_zh": "如 LLaMA-7B 约 130 亿 参数",  # a short excerpt, verbatim
     "claim_en": "LLaMA-7B has about 13 billion parameters.",
     "verdict": "corrected",               # confirmed / corrected / untested
     "finding": "6,738,415,616 parameters (Touvron et al. 2023, Table 2) ...",
     "where": "00 § 1.3 The 7B / 13B / 70B table"}   # notebook number § its section heading

``confirmed``: the series measures or computes it, or the cited paper says so; ``corrected``: it is wrong, and the
finding says what is right and why (a measurement or a paper); ``untested``: no measurement in the series settles it.
:func:`load_ledger` refuses unknown verdicts and sources; :func:`check_references` checks the quotes against the
source texts and the ``where`` headings against the notebook sources, as far as those files are present.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .interview import heading_key
from .models import REPO_ROOT

VERDICTS = ("confirmed", "corrected", "untested")
SOURCES = {
    "000": "LoRA vs Adapter vs Prefix tuning",
    "001": "overview of PEFT families",
    "002": "hands-on tutorial on bloom-1b4-zh",
    "003": "interview notes",
    "004": "adapters, prefix and prompt tuning with figures",
}
FIELDS = ("source", "quote_zh", "claim_en", "verdict", "finding", "where")
LEDGER_PATH = REPO_ROOT / "data" / "source_ledger.json"
_WHERE = re.compile(r"^(\d\d) § (.+)$")


class LedgerError(ValueError):
    """A row of the ledger that does not follow the format."""


@dataclass(frozen=True)
class Claim:
    source: str
    quote_zh: str
    claim_en: str
    verdict: str
    finding: str
    where: str

    @property
    def notebook(self) -> str:
        """The notebook number the claim is addressed in, e.g. ``"04"``."""
        return _WHERE.match(self.where).group(1)

    @property
    def heading(self) -> str:
        return _WHERE.match(self.where).group(2)


def validate_row(row: dict, index: int = 0) -> Claim:
    """One row as a :class:`Claim`, or a :class:`LedgerError` that names the row and the allowed values."""
    label = f"ledger row {index}"
    if not isinstance(row, dict) or set(row) != set(FIELDS):
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise LedgerError(f"{label}: needs exactly the fields {list(FIELDS)}, got {got}")
    for name in FIELDS:
        if not isinstance(row[name], str) or not row[name].strip():
            raise LedgerError(f"{label}: field {name!r} must be a non-empty string")
    if row["verdict"] not in VERDICTS:
        raise LedgerError(f"{label}: unknown verdict {row['verdict']!r}; allowed: {', '.join(VERDICTS)}")
    if row["source"] not in SOURCES:
        raise LedgerError(f"{label}: unknown source {row['source']!r}; allowed: {', '.join(SOURCES)}")
    if not _WHERE.match(row["where"]):
        raise LedgerError(f"{label}: where={row['where']!r} must read 'NN § heading', e.g. '04 § 7. ...'")
    return Claim(**{name: row[name] for name in FIELDS})


def load_ledger(path: str | Path = LEDGER_PATH) -> list[Claim]:
    """The ledger's rows, each validated (a :class:`LedgerError` on the first bad row)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise LedgerError(f"{path}: the ledger must be a JSON list of rows, got {type(data).__name__}")
    return [validate_row(row, i) for i, row in enumerate(data)]


def check_references(rows: Sequence[Claim], notebooks_src: str | Path | None = None,
                     sources_dir: str | Path | None = None) -> list[str]:
    """Problems with what the rows point to (an empty list when there are none).

    With ``notebooks_src``: every ``where`` names a notebook source that exists and one of its headings (compared by
    :func:`peftedu.course.interview.heading_key`, so a Chinese term added in parentheses does not break it). With
    ``sources_dir`` (the folder of ``000_*.txt`` … ``004_*.txt``): every quote occurs verbatim in its source.
    """
    problems, headings, texts = [], {}, {}
    for i, row in enumerate(rows):
        if notebooks_src is not None:
            if row.notebook not in headings:
                found = sorted(Path(notebooks_src).glob(f"{row.notebook}_*.py"))
                headings[row.notebook] = ({heading_key(m.group(1)) for m in re.finditer(
                    r"^# #+ (.+)$", found[0].read_text(encoding="utf-8"), re.MULTILINE)} if found else None)
            if headings[row.notebook] is None:
                problems.append(f"row {i}: no notebook {row.notebook} in {notebooks_src}")
            elif heading_key(row.heading) not in headings[row.notebook]:
                problems.append(f"row {i}: notebook {row.notebook} has no heading {row.heading!r}")
        if sources_dir is not None:
            if row.source not in texts:
                found = sorted(Path(sources_dir).glob(f"{row.source}_*.txt"))
                texts[row.source] = found[0].read_text(encoding="utf-8") if found else None
            if texts[row.source] is None:
                problems.append(f"row {i}: no source file {row.source}_*.txt in {sources_dir}")
            elif row.quote_zh not in texts[row.source]:
                problems.append(f"row {i}: quote {row.quote_zh!r} is not in source {row.source}")
    return problems


def ledger_counts(rows: Sequence[Claim]) -> dict[str, int]:
    """Rows per verdict, every verdict listed (0 where none), in the order of :data:`VERDICTS`."""
    counts = Counter(row.verdict for row in rows)
    return {verdict: counts[verdict] for verdict in VERDICTS}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def ledger_markdown(rows: Sequence[Claim]) -> str:
    """A Markdown table of the rows: source, quote, claim, verdict, finding, where (its heading without the Chinese
    terms in parentheses, to keep the column short)."""
    lines = ["| source | 原文 (quote) | claim | verdict | finding | where |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row.source} | {_cell(row.quote_zh)} | {_cell(row.claim_en)} | **{row.verdict}** | "
                     f"{_cell(row.finding)} | {row.notebook} § {_cell(heading_key(row.heading))} |")
    return "\n".join(lines)
