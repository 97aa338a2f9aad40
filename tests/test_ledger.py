"""The source ledger (data/source_ledger.json, peftedu/course/ledger.py): every claim of the source tutorials, checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftedu.course.ledger import (FIELDS, LEDGER_PATH, SOURCES, VERDICTS, LedgerError, check_references, ledger_counts,
                            ledger_markdown, load_ledger)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_SRC = ROOT / "notebooks" / "src"
SOURCES_DIR = ROOT.parent / "shared" / "sources"  # beside the checkout, not in it: a clean clone has no copy


@pytest.fixture(scope="module")
def rows():
    return load_ledger()


def _find(rows, source, fragment):
    found = [row for row in rows if row.source == source and fragment in row.quote_zh]
    assert found, f"no row of source {source} quotes {fragment!r}"
    return found[0]


def test_the_ledger_file_loads_and_every_row_validates(rows):
    assert LEDGER_PATH == ROOT / "data" / "source_ledger.json"
    assert 30 <= len(rows) <= 80
    raw = json.loads(LEDGER_PATH.read_text(encoding="utf-8"))
    assert all(list(row) == list(FIELDS) for row in raw)  # the documented field order


def test_every_verdict_is_one_of_the_three_and_each_is_used(rows):
    assert {row.verdict for row in rows} == set(VERDICTS) == {"confirmed", "corrected", "untested"}
    counts = ledger_counts(rows)
    assert list(counts) == list(VERDICTS) and sum(counts.values()) == len(rows)


def test_every_source_tutorial_has_rows(rows):
    assert {row.source for row in rows} == set(SOURCES)


def test_no_claim_is_entered_twice(rows):
    keys = [(row.source, row.quote_zh) for row in rows]
    assert len(keys) == len(set(keys))


def test_every_where_names_an_existing_notebook_and_one_of_its_headings(rows):
    assert all(list(NOTEBOOKS_SRC.glob(f"{row.notebook}_*.py")) for row in rows)
    assert check_references(rows, notebooks_src=NOTEBOOKS_SRC) == []


def test_every_quote_occurs_verbatim_in_its_source_text(rows):
    if not SOURCES_DIR.is_dir():
        pytest.skip(f"the source tutorials are not beside this checkout ({SOURCES_DIR}); CI's clean clone lacks them")
    assert check_references(rows, sources_dir=SOURCES_DIR) == []


def test_the_claims_the_series_had_not_addressed_are_in_the_ledger(rows):
    llama = _find(rows, "002", "130 亿")
    assert llama.verdict == "corrected" and "6,738,415,616" in llama.finding and "Touvron" in llama.finding
    projection = _find(rows, "002", "训练 更稳定")
    assert projection.verdict == "corrected" and "Li & Liang" in projection.finding and projection.notebook == "04"
    assert _find(rows, "002", "低数据任务上可能不稳定").verdict == "untested"
    prefix_advantages = [_find(rows, "002", fragment) for fragment in ("(>10B)", "梯度更容易传播", "不到 1%")]
    assert {row.verdict for row in prefix_advantages} == {"corrected", "untested"}
    assert _find(rows, "001", "稀疏化").verdict in ("corrected", "untested")  # DiffPruning
    assert "Guo et al." in _find(rows, "001", "稀疏化").finding
    assert "Houlsby et al. 2019" in _find(rows, "001", "早期探索").finding  # the history
    assert _find(rows, "001", "95%的全量微调性能").verdict == "untested"  # BitFit's "95% of full fine-tuning"
    assert _find(rows, "002", "0.418%").verdict == "corrected"


def test_an_unknown_verdict_is_refused_with_the_allowed_values(tmp_path):
    row = dict.fromkeys(FIELDS, "x") | {"source": "002", "verdict": "wrong", "where": "04 § 7. x"}
    (tmp_path / "bad.json").write_text(json.dumps([row]))
    with pytest.raises(LedgerError, match="unknown verdict 'wrong'; allowed: confirmed, corrected, untested"):
        load_ledger(tmp_path / "bad.json")


def test_an_unknown_source_or_a_missing_field_is_refused(tmp_path):
    row = dict.fromkeys(FIELDS, "x") | {"source": "007", "verdict": "confirmed", "where": "04 § 7. x"}
    (tmp_path / "bad.json").write_text(json.dumps([row]))
    with pytest.raises(LedgerError, match="unknown source '007'; allowed: 000, 001, 002, 003, 004"):
        load_ledger(tmp_path / "bad.json")
    del row["finding"]
    (tmp_path / "bad.json").write_text(json.dumps([row]))
    with pytest.raises(LedgerError, match="needs exactly the fields"):
        load_ledger(tmp_path / "bad.json")


def test_a_where_without_a_notebook_number_is_refused(tmp_path):
    row = dict.fromkeys(FIELDS, "x") | {"source": "002", "verdict": "confirmed", "where": "notebook four"}
    (tmp_path / "bad.json").write_text(json.dumps([row]))
    with pytest.raises(LedgerError, match="must read 'NN § heading'"):
        load_ledger(tmp_path / "bad.json")


def test_a_missing_heading_is_reported(rows):
    moved = type(rows[0])(**{**rows[0].__dict__, "where": f"{rows[0].notebook} § 99. No such section"})
    assert check_references([moved], notebooks_src=NOTEBOOKS_SRC) == [
        f"row 0: notebook {rows[0].notebook} has no heading '99. No such section'"]


def test_the_markdown_table_has_one_line_per_row_and_escapes_pipes(rows):
    table = ledger_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[0].startswith("| source |")
    piped = type(rows[0])(**{**rows[0].__dict__, "finding": "a | b"})
    assert "a \\| b" in ledger_markdown([piped])
