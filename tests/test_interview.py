"""The interview question bank is sound, its references exist, and the self-check grades and navigates."""

from pathlib import Path

import pytest

from peftedu import interview
from peftedu.interview import (
    GLOSSARY,
    LEVELS,
    NOTEBOOKS,
    QUESTIONS,
    TOPICS,
    SelfCheck,
    check_answer,
    get_question,
    pick_questions,
    select_questions,
    self_check_widget,
    to_markdown,
    validate_bank,
)

NOTEBOOK_SOURCES = Path(__file__).resolve().parent.parent / "notebooks" / "src"

# the topics the course promises to cover in its interview notebook (issue 5)
REQUIRED_TOPICS = ["bitfit", "prompt-tuning", "p-tuning", "prefix-tuning", "adapters", "llama-adapter", "lora",
                   "rslora", "loraplus", "qlora", "dora", "adalora", "ia3", "merging", "serving", "memory"]


def test_bank_is_sound_and_every_cited_heading_exists():
    assert validate_bank(QUESTIONS, notebooks_src=NOTEBOOK_SOURCES) == []


def test_bank_size_levels_and_topics():
    assert len(QUESTIONS) >= 30
    assert {q.level for q in QUESTIONS} == set(LEVELS)
    for level in LEVELS:
        assert len(select_questions(level=level)) >= 8, level
    covered = {q.topic for q in QUESTIONS}
    assert set(REQUIRED_TOPICS) <= covered
    assert covered <= set(TOPICS)
    assert len(select_questions(multiple_choice=True)) >= 10
    assert all(q.where for q in QUESTIONS)
    assert {nb for q in QUESTIONS for nb, _ in q.where} <= set(NOTEBOOKS)


def test_validate_bank_reports_problems():
    good = get_question("lora-init")
    broken = [
        interview.Question(id="x", topic="nope", level=4, question="?", answer="a", where=(("99_none", None),)),
        interview.Question(id="x", topic="lora", level=1, question="?", answer="says 12", where=((
            "06_lora", "No such heading"),), choices=("a", "a"), correct=5, facts={"n": "13"}, terms=("不存在",)),
        good,
    ]
    problems = validate_bank(broken, notebooks_src=NOTEBOOK_SOURCES)
    text = "\n".join(problems)
    for expected in ("duplicate id 'x'", "unknown topic", "level 4", "unknown notebook '99_none'",
                     "two distinct choices", "not an index", "no heading 'No such heading'", "fact n='13'",
                     "term '不存在'"):
        assert expected in text, expected
    assert not any(p.startswith("lora-init") for p in problems)


def test_select_filters_by_topic_level_and_kind():
    lora = select_questions("lora")
    assert lora and all(q.topic == "lora" for q in lora)
    assert [q.id for q in lora] == [q.id for q in QUESTIONS if q.topic == "lora"]  # bank order
    both = select_questions(["lora", "qlora"], level=[2, 3])
    assert both and all(q.topic in ("lora", "qlora") and q.level in (2, 3) for q in both)
    assert all(q.level <= 2 for q in select_questions(max_level=2))
    assert all(q.is_multiple_choice for q in select_questions(multiple_choice=True))
    assert not any(q.is_multiple_choice for q in select_questions(multiple_choice=False))
    assert len(select_questions()) == len(QUESTIONS)
    with pytest.raises(ValueError, match="Unknown topic"):
        select_questions("lorra")
    with pytest.raises(ValueError, match="Unknown level"):
        select_questions(level=5)


def test_pick_is_seeded_and_easiest_first():
    first = pick_questions(6, seed=3)
    assert [q.id for q in first] == [q.id for q in pick_questions(6, seed=3)]
    assert [q.level for q in first] == sorted(q.level for q in first)
    assert len({q.id for q in first}) == 6
    assert len(pick_questions(100, topic="dora")) == len(select_questions("dora"))
    with pytest.raises(ValueError, match="positive integer"):
        pick_questions(0)
    with pytest.raises(ValueError, match="No question"):
        pick_questions(2, topic="dora", multiple_choice=True)


def test_check_answer_by_index_and_text():
    q = get_question("nf4-bits")
    assert q.correct_choice == "4.5 / 4.127"
    assert check_answer(q, q.correct).correct
    assert check_answer("nf4-bits", " 4.5 / 4.127 ").correct  # by text, case and spaces ignored
    wrong = check_answer(q, 0)
    assert not wrong.correct and wrong.expected == "4.5 / 4.127" and "4.127 bits" in wrong.feedback()
    with pytest.raises(ValueError, match="out of range"):
        check_answer(q, 7)
    with pytest.raises(ValueError, match="not one of the choices"):
        check_answer(q, "5 / 5")
    with pytest.raises(ValueError, match="open question"):
        check_answer("why-peft", 0)
    with pytest.raises(KeyError):
        get_question("no-such-id")


def test_every_multiple_choice_answer_is_gradable():
    for q in select_questions(multiple_choice=True):
        results = [check_answer(q, i).correct for i in range(len(q.choices))]
        assert results.count(True) == 1 and results.index(True) == q.correct


def test_facts_and_terms():
    # every number an answer states is listed as a fact (so notebook 13 computes it) -- spot checks
    assert get_question("nf4-bits").facts == {"nf4": "4.5", "dq": "4.127", "saved": "0.373"}
    assert get_question("why-peft").facts["full_fp32_gb"] == "20.8 GB"
    assert all(term in GLOSSARY for q in QUESTIONS for term in q.terms)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in zh) for zh in GLOSSARY)  # keys are Chinese


def test_markdown_rendering():
    qs = [get_question("lora-init"), get_question("why-peft")]
    collapsed = to_markdown(qs, numbered_from=5)
    assert collapsed.count("<details>") == 2 and "**5. How are LoRA's A and B initialised?**" in collapsed
    assert "a) A random, B zero" in collapsed and "**a)**" in collapsed
    assert "06_lora.ipynb § Step 1" in collapsed
    assert "<details>" not in to_markdown(qs, answers="shown")
    hidden = to_markdown(qs, answers="hidden")
    assert "Kaiming" not in hidden and "A random, B zero" in hidden
    with pytest.raises(ValueError, match="collapsed"):
        to_markdown(qs, answers="maybe")


def test_self_check_state():
    quiz = SelfCheck(topic="qlora", multiple_choice=True)
    assert [q.id for q in quiz.pool] == ["nf4-bits"]
    assert quiz.answer(0).correct is False
    assert quiz.answer(1).correct is True  # a second try is graded but not scored
    assert quiz.score == "0 / 1 correct"
    quiz.set_filter(level=1, multiple_choice=True)
    ids = [quiz.current.id] + [quiz.next().id for _ in range(len(quiz.pool) - 1)]
    assert ids == [q.id for q in select_questions(level=1, multiple_choice=True)]
    assert quiz.next().id == ids[0]  # wraps around
    quiz.set_filter(topic="dora", multiple_choice=True)
    assert quiz.current is None and quiz.next() is None
    with pytest.raises(ValueError, match="No question"):
        quiz.answer(0)


def test_widget_builds_headless_and_reacts():
    box = self_check_widget()
    quiz = box.quiz
    (topic, level), question, choices, (check, reveal, following), feedback, score = (
        box.children[0].children, box.children[1], box.children[2], box.children[3].children, box.children[4],
        box.children[5])
    assert len(quiz.pool) == len(QUESTIONS) and QUESTIONS[0].question.split()[0] in question.value
    topic.value = "qlora"
    level.value = 2
    assert [q.topic for q in quiz.pool] == ["qlora"] * len(quiz.pool) and all(q.level == 2 for q in quiz.pool)
    while not quiz.current.is_multiple_choice:
        following.click()
    assert quiz.current.id == "nf4-bits" and list(choices.options) == list(quiz.current.choices)
    check.click()
    assert "Pick an answer" in feedback.value
    choices.value = quiz.current.correct_choice
    check.click()
    assert feedback.value.startswith("Correct.") and "07_qlora.ipynb" in feedback.value
    assert score.value == "<small>1 / 1 correct</small>"
    reveal.click()
    assert "4.127" in feedback.value
    topic.value, level.value = "dora", 1  # no basic DoRA question
    assert quiz.current is None and "No question" in question.value and check.disabled and following.disabled
    topic.value = "why-peft"
    assert check.disabled == (not quiz.current.is_multiple_choice)
