"""Interview preparation (面试准备): a question bank over the whole series.

The bank is data, in ``data/interview/`` (JSON, UTF-8), loaded here once at import:

* ``questions.json``: :data:`QUESTIONS`, a list of objects with exactly the fields of :class:`Question`, in order;
* ``glossary.json``: :data:`GLOSSARY`, Chinese term → English, in the order the glossary table shows them;
* ``labels.json``: :data:`LEVELS`, :data:`TOPICS` and :data:`NOTEBOOKS`, each key with the label a reader sees.

A question's fields:

* ``level`` 1 = basic (基础), 2 = intermediate (进阶), 3 = deep (深入);
* ``topic``, one key of :data:`TOPICS` (``"lora"``, ``"qlora"``, ``"serving"``, ...);
* ``where``: the notebooks and sections that demonstrate the answer, as ``[notebook, heading]`` pairs --
  ``heading`` is the section's heading text as written in ``notebooks/src/<notebook>.py`` (``null`` when
  the answer points to the notebook as a whole); the tests check every heading exists;
* ``terms``: the Chinese terms an interviewer may use (keys of :data:`GLOSSARY`);
* ``choices`` / ``correct`` for multiple-choice items (``correct`` is an index into ``choices``; an open question
  has no choices and ``correct`` null);
* ``facts``: every number the answer states, *as written in the answer*; notebook 13 computes each one with
  ``peftedu`` and asserts it, and the tests check that each appears in the answer text.

Loading checks every question's fields and types (:func:`question_from_row`) and the bank's consistency
(:func:`validate_bank`), so a broken file stops the import with a :class:`BankError` that names the question and
what is wrong. The logic is a few plain functions -- :func:`select_questions` (filter by topic / level / kind),
:func:`pick_questions` (a seeded sample), :func:`check_answer` (grade a multiple-choice answer),
:func:`to_markdown` (render for a notebook). The self-check quiz and its ipywidgets front end are in
:mod:`peftedu.course.quiz`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

from ..config import check_number
from .models import REPO_ROOT

#: The bank's folder: the repository's ``data/interview/``.
DATA_DIR = REPO_ROOT / "data" / "interview"
QUESTIONS_PATH = DATA_DIR / "questions.json"
GLOSSARY_PATH = DATA_DIR / "glossary.json"
LABELS_PATH = DATA_DIR / "labels.json"


class BankError(ValueError):
    """A file of ``data/interview/`` that does not follow the format."""


def _read_json(path: Path):
    if not path.exists():
        raise BankError(f"{path} not found: the interview bank is read from the repository's data/interview/ "
                        "(an editable install, `pip install -e .`, keeps it in reach).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BankError(f"{path} is not valid JSON: {error}") from None


def _labels(value, what: str) -> dict[str, str]:
    """``value`` as a ``{key: label}`` dict of non-empty strings, or a :class:`BankError` naming ``what``."""
    if not isinstance(value, dict):
        raise BankError(f"{what} must be an object of key: label, got {type(value).__name__}")
    for key, label in value.items():
        if not key.strip() or not isinstance(label, str) or not label.strip():
            raise BankError(f"{what}: {key!r} must map to a non-empty label, got {label!r}")
    return value


def load_labels(path: Path = LABELS_PATH) -> tuple[dict[int, str], dict[str, str], dict[str, str]]:
    """``(LEVELS, TOPICS, NOTEBOOKS)`` from ``labels.json``, an object of three label maps:
    ``{"levels": {"1": "basic (基础)", ...}, "topics": {...}, "notebooks": {...}}``."""
    data = _read_json(path)
    parts = ("levels", "topics", "notebooks")
    if not isinstance(data, dict) or set(data) != set(parts):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise BankError(f"{path}: needs exactly the keys {list(parts)}, got {got}")
    levels, topics, notebooks = (_labels(data[part], f"{path.name} {part}") for part in parts)
    if not all(key.isdigit() for key in levels):
        raise BankError(f"{path.name} levels: keys must be level numbers such as \"1\", got {list(levels)}")
    return {int(key): label for key, label in levels.items()}, topics, notebooks


def load_glossary(path: Path = GLOSSARY_PATH) -> dict[str, str]:
    """``glossary.json``: ``{"参数高效微调": "parameter-efficient fine-tuning (PEFT)", ...}``, in order."""
    return _labels(_read_json(path), path.name)


LEVELS, TOPICS, NOTEBOOKS = load_labels()
GLOSSARY = load_glossary()


@dataclass(frozen=True)
class Question:
    """One entry of the bank (see the module docstring for the fields)."""

    id: str
    topic: str
    level: int
    question: str
    answer: str
    where: tuple[tuple[str, str | None], ...]
    terms: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    correct: int | None = None
    facts: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)

    @property
    def correct_choice(self) -> str | None:
        return None if self.correct is None else self.choices[self.correct]

    def where_text(self) -> str:
        """``06_lora.ipynb § 9. Several adapters on one model; 11_serving.ipynb`` -- where to look."""
        return "; ".join(f"{nb}.ipynb" + (f" § {heading}" if heading else "") for nb, heading in self.where)


#: The fields of a question object in ``questions.json``, in order.
FIELDS = tuple(f.name for f in fields(Question))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_pair(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and (value[1] is None or isinstance(value[1], str)))


_FIELD_TYPES = {  # field: (check, what the JSON must hold)
    "id": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "topic": (lambda v: isinstance(v, str), "a string (a key of TOPICS)"),
    "level": (_is_int, "an integer (a key of LEVELS)"),
    "question": (lambda v: isinstance(v, str), "a string"),
    "answer": (lambda v: isinstance(v, str), "a string"),
    "where": (lambda v: isinstance(v, list) and all(map(_is_pair, v)),
              "a list of [notebook, heading] pairs (heading a string or null)"),
    "terms": (_is_strings, "a list of strings (keys of GLOSSARY)"),
    "choices": (_is_strings, "a list of strings ([] for an open question)"),
    "correct": (lambda v: v is None or _is_int(v), "an index into choices, or null for an open question"),
    "facts": (lambda v: isinstance(v, dict) and all(isinstance(t, str) for t in v.values()),
              "an object of name: number as written in the answer"),
}


def question_from_row(row: dict, index: int = 0) -> Question:
    """One object of ``questions.json`` as a :class:`Question`, or a :class:`BankError` that names the question (its
    position and id) and the field that is wrong."""
    named = isinstance(row, dict) and isinstance(row.get("id"), str)
    label = f"question at index {index}" + (f" ({row['id']!r})" if named else "")
    if not isinstance(row, dict) or set(row) != set(FIELDS):
        got = type(row).__name__ if not isinstance(row, dict) else (
            f"missing {sorted(set(FIELDS) - set(row))}, unknown {sorted(set(row) - set(FIELDS))}")
        raise BankError(f"{label}: needs exactly the fields {list(FIELDS)}; {got}")
    for name, (check, expected) in _FIELD_TYPES.items():
        if not check(row[name]):
            raise BankError(f"{label}: {name} must be {expected}, got {row[name]!r}")
    return Question(id=row["id"], topic=row["topic"], level=row["level"], question=row["question"],
                    answer=row["answer"], where=tuple(tuple(pair) for pair in row["where"]), terms=tuple(row["terms"]),
                    choices=tuple(row["choices"]), correct=row["correct"], facts=dict(row["facts"]))


# ------------------------------------------------------------------------------------------------ logic
_CHINESE_IN_PARENTHESES = re.compile(r"\s*\([^()]*[\u4e00-\u9fff][^()]*\)")


def heading_key(heading: str) -> str:
    """A heading without its Chinese terms in parentheses: ``"2. The soft prompt (软提示), from scratch"`` and
    ``"2. The soft prompt, from scratch"`` cite the same section."""
    return _CHINESE_IN_PARENTHESES.sub("", heading).strip()


def _heading_words(key: str) -> tuple[str | None, set[str]]:
    number = re.match(r"(\d+(?:\.\d+)*)\.?\s", key)
    return (number.group(1) if number else None), set(re.findall(r"[a-z0-9]{2,}", key.lower()))


def cites(heading: str, existing: Iterable[str]) -> bool:
    """Whether a cited heading names one of ``existing``: the same :func:`heading_key`, or -- for a numbered
    section -- the same number and at least half of the cited words (so "3. Switching: ..." still finds
    "3. Adapter switching (适配器切换): ..." after a heading gained a term, but not another section)."""
    key = heading_key(heading)
    keys = {heading_key(h) for h in existing}
    if key in keys:
        return True
    number, words = _heading_words(key)
    if number is None or not words:
        return False
    for other in keys:
        other_number, other_words = _heading_words(other)
        if other_number == number and len(words & other_words) >= len(words) / 2:
            return True
    return False


def validate_bank(questions: Sequence[Question] | None = None, notebooks_src: str | Path | None = None) -> list[str]:
    """Problems in the bank (an empty list when it is sound); the unit tests assert there are none.

    With ``notebooks_src`` (the folder of the notebook sources), every cited heading must exist in the source of
    its notebook, if that source exists (by :func:`cites`: a Chinese term added to a heading does not break it).
    ``questions`` defaults to the bank, :data:`QUESTIONS`.
    """
    questions = QUESTIONS if questions is None else questions
    problems = []
    ids = [q.id for q in questions]
    problems += [f"duplicate id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    headings: dict[str, set[str] | None] = {}
    for q in questions:
        if q.topic not in TOPICS:
            problems.append(f"{q.id}: unknown topic {q.topic!r}")
        if q.level not in LEVELS:
            problems.append(f"{q.id}: level {q.level!r} is not one of {list(LEVELS)}")
        if not q.question.strip() or not q.answer.strip():
            problems.append(f"{q.id}: empty question or answer")
        if q.is_multiple_choice:
            if len(q.choices) < 2 or len(set(q.choices)) != len(q.choices):
                problems.append(f"{q.id}: a multiple-choice item needs at least two distinct choices")
            if not (isinstance(q.correct, int) and 0 <= q.correct < len(q.choices)):
                problems.append(f"{q.id}: correct={q.correct!r} is not an index into its choices")
        elif q.correct is not None:
            problems.append(f"{q.id}: an open question has correct={q.correct!r}")
        if not q.where:
            problems.append(f"{q.id}: points to no notebook")
        for notebook, heading in q.where:
            if notebook not in NOTEBOOKS:
                problems.append(f"{q.id}: unknown notebook {notebook!r}")
                continue
            if heading is None or notebooks_src is None:
                continue
            if notebook not in headings:
                source = Path(notebooks_src) / f"{notebook}.py"
                headings[notebook] = ({m.group(1).strip() for m in re.finditer(r"^# #+ (.+)$", source.read_text(),
                                                                                 re.MULTILINE)}
                                      if source.exists() else None)
            if headings[notebook] is not None and not cites(heading, headings[notebook]):
                problems.append(f"{q.id}: {notebook} has no heading {heading!r}")
        for term in q.terms:
            if term not in GLOSSARY:
                problems.append(f"{q.id}: term {term!r} is not in GLOSSARY")
        for name, text in q.facts.items():
            if text not in q.answer and text not in q.question:
                problems.append(f"{q.id}: fact {name}={text!r} does not appear in the question or answer")
    return problems


def load_questions(path: Path = QUESTIONS_PATH) -> tuple[Question, ...]:
    """``questions.json`` as questions, in file order; a :class:`BankError` lists every problem
    :func:`validate_bank` finds (the cited headings are checked by the tests, against the notebook sources)."""
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise BankError(f"{path}: must hold a list of question objects, got {type(rows).__name__}")
    try:
        questions = tuple(question_from_row(row, index) for index, row in enumerate(rows))
    except BankError as error:
        raise BankError(f"{path}: {error}") from None
    problems = validate_bank(questions)
    if problems:
        raise BankError(f"{path}: " + "; ".join(problems))
    return questions


#: The bank, in the order of ``questions.json``.
QUESTIONS: tuple[Question, ...] = load_questions()


def get_question(question_id: str, questions: Sequence[Question] = QUESTIONS) -> Question:
    for question in questions:
        if question.id == question_id:
            return question
    raise KeyError(f"No question with id {question_id!r}; ids look like {[q.id for q in questions[:3]]}.")


def _as_set(value, known: Iterable, what: str) -> set | None:
    if value is None:
        return None
    values = {value} if isinstance(value, (str, int)) else set(value)
    unknown = sorted(map(str, values - set(known)))
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}; choose from {list(known)}.")
    return values


def select_questions(topic: str | Iterable[str] | None = None, level: int | Iterable[int] | None = None, *,
                     max_level: int | None = None, multiple_choice: bool | None = None,
                     questions: Sequence[Question] = QUESTIONS) -> list[Question]:
    """The questions of ``topic`` (a key of TOPICS, or several) at ``level`` (1, 2, 3, or several), in bank order.

    ``max_level=2`` keeps levels 1 and 2; ``multiple_choice=True/False`` keeps only one kind. ``None`` = no filter.
    """
    topics = _as_set(topic, TOPICS, "topic")
    levels = _as_set(level, LEVELS, "level")
    if max_level is not None and max_level not in LEVELS:
        raise ValueError(f"max_level must be one of {list(LEVELS)}, got {max_level!r}.")
    return [q for q in questions
            if (topics is None or q.topic in topics)
            and (levels is None or q.level in levels)
            and (max_level is None or q.level <= max_level)
            and (multiple_choice is None or q.is_multiple_choice == multiple_choice)]


def pick_questions(n: int, *, seed: int = 0, **filters) -> list[Question]:
    """``n`` questions drawn without replacement (seeded: the same seed gives the same draw), easiest first.

    ``filters`` are :func:`select_questions`'s arguments. Asking for more than there are returns them all.
    """
    check_number("n", n, integer=True)
    pool = select_questions(**filters)
    if not pool:
        raise ValueError(f"No question matches {filters}.")
    chosen = random.Random(seed).sample(range(len(pool)), min(n, len(pool)))
    return [pool[i] for i in sorted(chosen, key=lambda i: (pool[i].level, i))]


@dataclass(frozen=True)
class AnswerCheck:
    correct: bool
    chosen: str
    expected: str
    explanation: str

    def feedback(self) -> str:
        verdict = "Correct." if self.correct else f"Not quite: the answer is “{self.expected}”."
        return f"{verdict} {self.explanation}"


def check_answer(question: Question | str, choice: int | str) -> AnswerCheck:
    """Grade a multiple-choice answer, given as the index of the choice or its text."""
    q = get_question(question) if isinstance(question, str) else question
    if not q.is_multiple_choice:
        raise ValueError(f"Question {q.id!r} is an open question: compare your answer with q.answer instead.")
    if isinstance(choice, bool) or not isinstance(choice, (int, str)):
        raise ValueError(f"choice must be an index or the text of a choice, got {choice!r}.")
    if isinstance(choice, int):
        if not 0 <= choice < len(q.choices):
            raise ValueError(f"choice index {choice} is out of range for {len(q.choices)} choices.")
        index = choice
    else:
        matches = [i for i, text in enumerate(q.choices) if text.strip().lower() == choice.strip().lower()]
        if not matches:
            raise ValueError(f"{choice!r} is not one of the choices {list(q.choices)}.")
        index = matches[0]
    return AnswerCheck(correct=index == q.correct, chosen=q.choices[index], expected=q.correct_choice,
                       explanation=q.answer)


def glossary_markdown(glossary: dict[str, str] | None = None, columns: int = 1) -> str:
    """The glossary as a Markdown table, Chinese → English, in order; ``columns=2`` puts two pairs of columns side by
    side (read down the first pair, then the second), half as long."""
    pairs = list((GLOSSARY if glossary is None else glossary).items())
    check_number("columns", columns, integer=True)
    rows = -(-len(pairs) // columns)
    lines = ["| 中文 | English " * columns + "|", "| --- | --- " * columns + "|"]
    for i in range(rows):
        cells = [pairs[i + c * rows] if i + c * rows < len(pairs) else ("", "") for c in range(columns)]
        lines.append("".join(f"| {zh} | {en} " for zh, en in cells) + "|")
    return "\n".join(lines)


def to_markdown(questions: Sequence[Question], *, answers: str = "collapsed", numbered_from: int = 1) -> str:
    """Markdown for a notebook: each question, its choices, and its answer with the notebooks that show it.

    ``answers``: ``"collapsed"`` (inside ``<details>``, as the course's exercises), ``"shown"`` or ``"hidden"``.
    """
    if answers not in ("collapsed", "shown", "hidden"):
        raise ValueError(f"answers must be 'collapsed', 'shown' or 'hidden', got {answers!r}.")
    blocks = []
    for number, q in enumerate(questions, start=numbered_from):
        lines = [f"**{number}. {q.question}** *({LEVELS[q.level].split()[0]}, {TOPICS[q.topic]})*"]
        if q.is_multiple_choice:
            lines += [""] + [f"{chr(ord('a') + i)}) {choice}  " for i, choice in enumerate(q.choices)]
        body = q.answer
        if q.is_multiple_choice:
            body = f"**{chr(ord('a') + q.correct)})** {body}"
        body += f"\n\n*See:* {q.where_text()}"
        if q.terms:
            body += "  \n*Terms:* " + ", ".join(f"{t} ({GLOSSARY[t]})" for t in q.terms)
        if answers == "collapsed":
            lines += ["", "<details><summary>Answer</summary>", "", body, "", "</details>"]
        elif answers == "shown":
            lines += ["", body]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


__all__ = [
    "AnswerCheck", "BankError", "DATA_DIR", "FIELDS", "GLOSSARY", "GLOSSARY_PATH", "LABELS_PATH", "LEVELS", "NOTEBOOKS",
    "QUESTIONS", "QUESTIONS_PATH", "Question", "TOPICS", "check_answer", "cites", "get_question", "glossary_markdown",
    "heading_key", "load_glossary", "load_labels", "load_questions", "pick_questions", "question_from_row",
    "select_questions", "to_markdown", "validate_bank",
]
