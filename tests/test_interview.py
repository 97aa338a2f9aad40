"""The interview question bank is sound, its references exist, and the self-check grades and navigates."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from peftedu.course import interview
from peftedu.course.interview import (
    FIELDS,
    GLOSSARY,
    LEVELS,
    NOTEBOOKS,
    QUESTIONS,
    TOPICS,
    BankError,
    check_answer,
    get_question,
    load_glossary,
    load_labels,
    load_questions,
    pick_questions,
    select_questions,
    to_markdown,
    validate_bank,
)
from peftedu.course.quiz import ALL, QUIZ_NOTE, SelfCheck, filter_options, question_text, self_check_widget

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_SOURCES = REPO / "notebooks" / "src"
BANK = REPO / "data" / "interview"

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


def test_the_bank_is_data_in_data_interview():
    assert interview.DATA_DIR == BANK
    rows = json.loads((BANK / "questions.json").read_text(encoding="utf-8"))
    assert [list(row) for row in rows] == [list(FIELDS)] * len(rows)  # every field, in the dataclass's order
    assert [row["id"] for row in rows] == [q.id for q in QUESTIONS]  # the bank keeps the file's order
    assert load_questions() == QUESTIONS and [q.facts for q in load_questions()] == [q.facts for q in QUESTIONS]
    assert [asdict(q) for q in QUESTIONS] == [
        {**row, "where": tuple(map(tuple, row["where"])), "terms": tuple(row["terms"]),
         "choices": tuple(row["choices"])} for row in rows]
    assert list(load_glossary().items()) == list(GLOSSARY.items())
    assert load_labels() == (LEVELS, TOPICS, NOTEBOOKS) and list(LEVELS) == [1, 2, 3]
    assert len({q.id for q in QUESTIONS}) == len(QUESTIONS) >= 30
    for path in BANK.glob("*.json"):  # pretty-printed UTF-8, Chinese as written
        text = path.read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), ensure_ascii=False, indent=1) + "\n", path.name


def test_every_question_the_notebooks_cite_exists():
    # get_question("lora-7b"), get_question("lora-7b").facts["share"] (notebook 00), fact("nf4-bits", "dq") (13)
    citation = re.compile(r'get_question\("([^"]+)"\)(?:\.facts\["([^"]+)"\])?|fact\("([^"]+)", "([^"]+)"\)')
    cited = {}
    for path in sorted(NOTEBOOK_SOURCES.glob("*.py")):
        for match in citation.finditer(path.read_text()):
            question_id, name = match.group(1) or match.group(3), match.group(2) or match.group(4)
            cited.setdefault((question_id, name), path.name)
    assert ("lora-7b", "share") in cited and ("nf4-bits", "dq") in cited  # the scan sees both forms
    ids = {q.id for q in QUESTIONS}
    missing = {key: where for key, where in cited.items() if key[0] not in ids or (
        key[1] is not None and key[1] not in get_question(key[0]).facts)}
    assert missing == {}, f"(question id, fact) cited but not in data/interview/questions.json: {missing}"


def _write_bank(tmp_path, rows):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def test_a_broken_bank_file_names_the_question_and_what_is_wrong(tmp_path):
    good = json.loads((BANK / "questions.json").read_text(encoding="utf-8"))[:2]
    assert load_questions(_write_bank(tmp_path, good)) == QUESTIONS[:2]
    cases = [
        ({"level": "1"}, r"questions.json: question at index 1 \('bytes-per-param'\): level must be an integer"),
        ({"where": [["00_introduction"]]}, r"'bytes-per-param'\): where must be a list of \[notebook, heading\] pairs"),
        ({"terms": "显存"}, r"'bytes-per-param'\): terms must be a list of strings"),
        ({"correct": True}, r"'bytes-per-param'\): correct must be an index into choices"),
        ({"topic": "lorra"}, r"bytes-per-param: unknown topic 'lorra'"),  # validate_bank runs on load
        ({"correct": 9}, r"bytes-per-param: correct=9 is not an index"),
        ({"id": "why-peft"}, r"duplicate id 'why-peft'"),
    ]
    for change, message in cases:
        with pytest.raises(BankError, match=message):
            load_questions(_write_bank(tmp_path, [good[0], {**good[1], **change}]))
    missing = {name: value for name, value in good[1].items() if name != "facts"}
    with pytest.raises(BankError, match=r"'bytes-per-param'\): needs exactly the fields .*missing \['facts'\]"):
        load_questions(_write_bank(tmp_path, [good[0], missing]))
    with pytest.raises(BankError, match=r"unknown \['note'\]"):
        load_questions(_write_bank(tmp_path, [{**good[0], "note": "x"}]))
    with pytest.raises(BankError, match="must hold a list"):
        load_questions(_write_bank(tmp_path, {"why-peft": good[0]}))
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(BankError, match="bad.json is not valid JSON"):
        load_questions(tmp_path / "bad.json")
    with pytest.raises(BankError, match="not found.*data/interview"):
        load_questions(tmp_path / "none.json")
    labels = json.loads((BANK / "labels.json").read_text(encoding="utf-8"))
    (tmp_path / "labels.json").write_text(json.dumps({**labels, "levels": {"basic": "basic"}}), encoding="utf-8")
    with pytest.raises(BankError, match="levels: keys must be level numbers"):
        load_labels(tmp_path / "labels.json")
    (tmp_path / "labels.json").write_text(json.dumps({"topics": {}}), encoding="utf-8")
    with pytest.raises(BankError, match=r"needs exactly the keys \['levels', 'topics', 'notebooks'\]"):
        load_labels(tmp_path / "labels.json")
    (tmp_path / "glossary.json").write_text(json.dumps({"显存": ""}), encoding="utf-8")
    with pytest.raises(BankError, match="'显存' must map to a non-empty label"):
        load_glossary(tmp_path / "glossary.json")


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
    box = self_check_widget(static=False)
    quiz = box.quiz
    (topic, level), question, choices, (check, reveal, following), feedback, score = (
        box.children[0].children, box.children[1], box.children[2], box.children[3].children, box.children[4],
        box.children[5])
    assert len(quiz.pool) == len(QUESTIONS) and quiz.current.question.split()[0] in question.value
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
    topic.value, level.value = ALL, ALL  # back to every question
    assert len(quiz.pool) == len(QUESTIONS)


def test_menus_have_labelled_values_with_counts_and_no_none():
    # ipywidgets reads a value of None as "nothing selected": the menus opened blank when "all" was None
    topics, levels = filter_options()
    assert topics[0] == (f"all topics ({len(QUESTIONS)} questions)", ALL)
    assert levels[0] == (f"all levels ({len(QUESTIONS)} questions)", ALL)
    for (label, value), expected in zip(levels[1:], LEVELS):
        n = len(select_questions(level=expected))
        assert value == expected and label == f"{LEVELS[expected]}: {n} question{'' if n == 1 else 's'}"
    assert {value for _, value in topics[1:]} == {q.topic for q in QUESTIONS}
    assert dict((value, label) for label, value in topics)["lora"].endswith(f": {len(select_questions('lora'))} questions")
    assert None not in [value for _, value in topics + levels]
    box = self_check_widget(static=False)
    topic, level = box.children[0].children
    assert (topic.value, topic.label) == (ALL, topics[0][0]) and (level.value, level.label) == (ALL, levels[0][0])


def test_widget_opens_on_a_multiple_choice_question_and_prints_it_for_static_views(capsys):
    box = self_check_widget()
    out = capsys.readouterr().out
    first = next(q for q in QUESTIONS if q.is_multiple_choice)
    assert box.quiz.current is first and not box.children[3].children[0].disabled  # "Check" is live
    assert question_text(box.quiz) in out and QUIZ_NOTE in out
    assert f"  a) {first.choices[0]}" in question_text(box.quiz)
    assert repr(box) == "self-check quiz (interactive: the controls need a running kernel)"
    quiz = SelfCheck(topic="lora")
    assert quiz.current.id == "lora-formula" and quiz.to_first_multiple_choice().id == "lora-init"
    assert SelfCheck(topic="dora", multiple_choice=True).to_first_multiple_choice() is None


def test_lora_7b_share_uses_peft_denominator():
    # one denominator in the series: trainable / (base + LoRA), as peft's print_trainable_parameters (notebook 00 too)
    from peftedu.course.shapes import LLAMA_SHAPES

    llama7 = LLAMA_SHAPES["7B"]
    lora, base = llama7.lora_params(64), llama7.n_params()
    q = get_question("lora-7b")
    assert q.facts["lora"] == f"{lora:,}" and q.facts["n"] == f"{base:,}"
    assert q.facts["share"] == f"{100 * lora / (base + lora):.2f}%" == "2.32%"
    assert "base + LoRA" in q.answer and "print_trainable_parameters" in q.answer


def test_cache_positions_are_presented_as_a_design_choice():
    answer = get_question("cache-api").answer
    for phrase in ("p..p+T-1", "0..T-1", "design choice", "transformers", "peftedu", "training and inference"):
        assert phrase in answer, phrase


# --------------------------------------------------------------------------------- one term per concept
CJK = re.compile(r"[\u4e00-\u9fff]")
# Chinese in parentheses right after English text: "prefix tuning (前缀微调)", "**GQA** (分组查询注意力: ...)"
TERMS_IN_PARENTHESES = re.compile(r"(?<=[A-Za-z0-9`*)\]]) ?\(([^()\n]*[\u4e00-\u9fff][^()\n]*)\)")
# Chinese in parentheses that is not a GLOSSARY term, each with the reason (keep this list short)
NOT_GLOSSARY_TERMS: dict[str, str] = {}  # e.g. {"他说的原话": "a sentence quoted from source 002"}
LEVEL_NAMES = {re.search(r"\((.+)\)", label).group(1) for label in LEVELS.values()}  # 基础, 进阶, 深入


def chinese_terms_in_parentheses(text: str) -> list[str]:
    """Each Chinese part of a parenthesis after English text: split at commas, semicolons and slashes, cut at a
    colon (an explanation follows), spaces removed ("4 位正态浮点" is the key 4位正态浮点)."""
    terms = []
    for match in TERMS_IN_PARENTHESES.finditer(text):
        for part in re.split(r"[,，、;；/]", match.group(1)):
            part = re.split(r"[:：]", part)[0]
            if CJK.search(part):
                terms.append(re.sub(r"\s+", "", part))
    return terms


def test_term_scanner():
    text = ("## 2. Prefix tuning (前缀微调) from scratch\n**GQA** (分组查询注意力: 9 heads share 3)\n"
            "forgetting (灾难性遗忘, catastrophic forgetting), NF4 (4 位正态浮点, NormalFloat-4)\n"
            "他说(不是术语) and (LoRA) stay out")
    assert chinese_terms_in_parentheses(text) == ["前缀微调", "分组查询注意力", "灾难性遗忘", "4位正态浮点"]


def test_chinese_terms_in_notebooks_are_glossary_terms():
    unknown = {}
    for source in sorted(NOTEBOOK_SOURCES.glob("*.py")):
        for term in chinese_terms_in_parentheses(source.read_text()):
            if term not in GLOSSARY and term not in LEVEL_NAMES and term not in NOT_GLOSSARY_TERMS:
                unknown.setdefault(term, []).append(source.stem)
    assert unknown == {}, f"Chinese terms that are not GLOSSARY keys (use the glossary's term, or add it): {unknown}"


def test_glossary_uses_the_sources_terms():
    # source 001 names the three families 添加附加参数 / 选择性微调 / 基于重参数化; 01 says 选择性微调
    assert "选择性微调" in GLOSSARY and "选择式" not in GLOSSARY
    assert "选择性微调" in get_question("families").terms
    assert all("选择式" not in q.question + q.answer for q in QUESTIONS)


def test_a_chinese_term_added_to_a_heading_keeps_its_citations():
    assert interview.heading_key("2. The soft prompt (软提示), from scratch") == "2. The soft prompt, from scratch"
    assert interview.heading_key("11. Merging the weights (权重合并): W ← W + (α/r)·B A") == \
        "11. Merging the weights: W ← W + (α/r)·B A"  # parentheses without Chinese stay
    existing = ["3. Adapter switching (适配器切换): `set_adapter`, `disable_adapter()`", "4. A mixed batch", "Summary"]
    assert interview.cites("3. Switching: `set_adapter`, `disable_adapter()`", existing)  # a heading gained a term
    assert interview.cites("Summary", existing)
    assert not interview.cites("4. Throughput: mixed batch vs switching", existing)  # same number, another section
    assert not interview.cites("No such heading", existing)


def test_glossary_markdown_lists_every_term_once():
    from peftedu.course.interview import glossary_markdown

    one, two = glossary_markdown(), glossary_markdown(columns=2)
    assert one.splitlines()[0] == "| 中文 | English |" and len(one.splitlines()) == len(GLOSSARY) + 2
    assert len(two.splitlines()) == -(-len(GLOSSARY) // 2) + 2
    for zh, en in GLOSSARY.items():
        assert one.count(f"| {zh} | {en} |") == 1 and two.count(f"| {zh} | {en} |") == 1
    with pytest.raises(ValueError, match="columns"):
        glossary_markdown(columns=0)
