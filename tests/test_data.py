"""Tasks, prompts, tokenization, collation and scoring (peftedu.course.data, .tokenization). Offline, CPU."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from peftedu.course import data, tokenization
from peftedu.course.data import (
    SPLIT_SIZES,
    TASKS,
    TOPIC_LABELS,
    VOCABULARY_PATH,
    canonical_json,
    generate_task,
    load_task,
    load_vocabulary,
    score,
    write_tasks,
)
from peftedu.course.tokenization import (
    IGNORE_INDEX,
    TrainingCollator,
    build_prompt,
    collate_for_generation,
    collate_for_training,
    tokenize_example,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from peftedu.course.models import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def plain_tokenizer():
    """The same vocabulary without a chat template: prompts fall back to "Human: ...Assistant: "."""
    from transformers import AutoTokenizer

    from peftedu.course.models import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source())
    tok.chat_template = None
    tok.pad_token = tok.eos_token
    return tok


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- generated tasks ---------------------------------------------------------------------------
def test_committed_files_are_what_the_generator_writes(tmp_path):
    written = write_tasks(tmp_path)
    committed = data.tasks_dir()
    for task, paths in written.items():
        for split, path in paths.items():
            assert path.read_bytes() == (committed / task / f"{split}.jsonl").read_bytes(), (
                f"data/tasks/{task}/{split}.jsonl is stale: rerun `python -m peftedu.course.data`")


def test_generation_is_deterministic():
    assert generate_task("extract") == generate_task("extract")


@pytest.mark.parametrize("task", ["topic", "extract", "lexicon"])
def test_split_sizes_fields_and_no_overlap(task):
    splits = generate_task(task)
    assert {s: len(r) for s, r in splits.items()} == SPLIT_SIZES[task]
    inputs = {s: {r["input"] for r in records} for s, records in splits.items()}
    assert sum(len(v) for v in inputs.values()) == sum(SPLIT_SIZES[task].values())  # all unique
    for records in splits.values():
        assert all(set(r) == {"instruction", "input", "output"} for r in records)


def test_topic_labels_are_balanced_and_listed_in_the_instruction():
    for split, records in generate_task("topic").items():
        counts = Counter(r["output"] for r in records)
        assert set(counts) == set(TOPIC_LABELS)
        assert min(counts.values()) >= 0.15 * len(records), (split, counts)
    for label in TOPIC_LABELS:
        assert label in data.TOPIC_INSTRUCTION


def test_extract_answers_are_canonical_and_grounded_in_the_text():
    for records in generate_task("extract").values():
        for r in records:
            fields = json.loads(r["output"])
            assert list(fields) == ["name", "age", "city"] and isinstance(fields["age"], int)
            assert r["output"] == canonical_json(**fields) == json.dumps(fields)
            assert fields["name"] in r["input"] and fields["city"] in r["input"]
            assert str(fields["age"]) in r["input"]
    assert canonical_json("Mara", 34, "Lyon") == '{"name": "Mara", "age": 34, "city": "Lyon"}'


def test_lexicon_is_an_invented_language_learnable_from_train():
    lexicon = data.make_lexicon()
    assert lexicon == data.LEXICON == data.make_lexicon(data.TASK_SEEDS["lexicon"])
    meanings = json.loads(VOCABULARY_PATH.read_text(encoding="utf-8"))["lexicon"]["meanings"]
    assert sorted(lexicon.values()) == sorted(meanings) and len(set(lexicon)) == len(meanings)
    assert not set(lexicon) & set(meanings)  # no Velish word is one of the English meanings
    assert data.make_lexicon(seed=1) != lexicon  # the seed decides the words
    splits = generate_task("lexicon")
    seen_in_train = {w for r in splits["train"] for w in r["input"].split()}
    assert seen_in_train == set(lexicon)  # every word a test phrase uses was taught
    for records in splits.values():
        for r in records:
            words = r["input"].split()
            assert len(words) == len(set(words)) == 3
            assert r["output"] == " ".join(lexicon[w] for w in words)
            assert r["instruction"] == data.LEXICON_INSTRUCTION


def test_retention_questions():
    splits = generate_task("retention")
    questions = [r["instruction"] for r in splits["test"]]
    assert len(questions) == len(set(questions)) >= 40
    assert all(r in splits["test"] for r in splits["validation"])
    with pytest.raises(ValueError, match="Unknown task"):
        generate_task("sentiment")


def test_the_vocabulary_file_is_pretty_printed_json():
    text = VOCABULARY_PATH.read_text(encoding="utf-8")
    assert data.tasks_dir() not in VOCABULARY_PATH.parents  # data/tasks holds only generated task files
    assert text == json.dumps(json.loads(text), indent=1, ensure_ascii=False) + "\n", (
        "data/task_vocabulary.json: write it with json.dumps(..., indent=1, ensure_ascii=False) plus a newline")
    assert data.RETENTION_QUESTIONS == [(q["question"], q["answer"]) for q in json.loads(text)["retention"]["questions"]]


def test_the_vocabulary_loader_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="task vocabulary .*missing"):
        load_vocabulary(tmp_path / "task_vocabulary.json")
    good = json.loads(VOCABULARY_PATH.read_text(encoding="utf-8"))
    assert load_vocabulary(VOCABULARY_PATH) == good

    def broken(edit, match, error=ValueError):
        vocabulary = json.loads(json.dumps(good))
        edit(vocabulary)
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
        with pytest.raises(error, match=match):
            load_vocabulary(path)

    broken(lambda v: v["extract"].update(cities=[]), r"extract\.cities is empty")
    broken(lambda v: v["topic"]["events"].update(travel=[]), r"topic\.events\.travel is empty")
    broken(lambda v: v["topic"].pop("templates"), r"'topic' lacks the keys \['templates'\]")
    broken(lambda v: v.pop("retention"), "no object 'retention'")
    broken(lambda v: v["topic"].update(instruction=" "), r"topic\.instruction is empty")
    broken(lambda v: v["topic"]["subjects"].pop("cooking"), r"topic\.subjects has lists for")
    broken(lambda v: v["retention"]["questions"][3].pop("answer"), r"retention\.questions\[3\]")


# --- loading -----------------------------------------------------------------------------------
def test_load_task_reads_the_jsonl_files():
    dataset = load_task("topic")
    assert set(dataset) == {"train", "validation", "test"}
    test = load_task("topic", "test")
    assert len(test) == 100 and set(test.column_names) == {"instruction", "input", "output"}
    assert test[0] == read_jsonl(data.tasks_dir() / "topic" / "test.jsonl")[0]
    assert set(load_task("retention")) == {"validation", "test"}


def test_load_task_from_a_folder_of_json_files(tmp_path):
    # A stand-in for a hub instruction dataset such as alpaca-zh (same field names).
    rows = [{"instruction": "把这句话翻译成英文", "input": "你好", "output": "Hello"},
            {"instruction": "1 + 1 = ?", "input": "", "output": "2"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                          encoding="utf-8")
    (tmp_path / "dev.json").write_text(json.dumps(rows[:1], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not data")
    dataset = load_task(str(tmp_path))
    assert set(dataset) == {"train", "validation"}
    assert dataset["train"][0] == rows[0] and len(dataset["validation"]) == 1
    assert load_task(str(tmp_path), "train")[1]["output"] == "2"


def test_load_task_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Unknown task 'no-such-owner/no-such-dataset'"):
        load_task("no-such-owner/no-such-dataset")
    with pytest.raises(ValueError, match="has no split 'train'"):
        load_task("retention", "train")
    with pytest.raises(ValueError, match="no .json or .jsonl files"):
        load_task(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="write_tasks"):
        load_task("topic", root=tmp_path)
    with pytest.raises(ValueError, match="task must be"):
        load_task("")


# --- prompts and tokenization ------------------------------------------------------------------
def test_build_prompt_with_and_without_a_chat_template(tokenizer, plain_tokenizer):
    prompt = build_prompt(tokenizer, "Name the topic.", "The chef baked bread.")
    assert prompt.endswith("<|im_start|>user\nName the topic.\nThe chef baked bread.<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt(tokenizer, "Hi?").endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    plain = build_prompt(plain_tokenizer, "Name the topic.", "The chef baked bread.")
    assert plain == "Human: Name the topic.\nThe chef baked bread.\n\nAssistant: "


@pytest.mark.parametrize("which", ["tokenizer", "plain_tokenizer"])
def test_tokenize_example_masks_the_prompt_and_labels_eos(which, request):
    tok = request.getfixturevalue(which)
    record = {"instruction": data.TOPIC_INSTRUCTION, "input": "The striker scored twice.", "output": "sports"}
    features = tokenize_example(tok, record, max_length=256)
    prompt_ids = tok(build_prompt(tok, record["instruction"], record["input"]), add_special_tokens=False)["input_ids"]
    answer_ids = tok("sports", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert features["input_ids"] == prompt_ids + answer_ids
    assert features["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert features["attention_mask"] == [1] * len(features["input_ids"])
    assert features["labels"][-1] == tok.eos_token_id


def test_truncation_keeps_the_answer_and_the_assistant_marker(tokenizer):
    record = {"instruction": "Summarise.", "input": "word " * 300, "output": "short answer"}
    full = tokenize_example(tokenizer, record, max_length=10_000)
    cut = tokenize_example(tokenizer, record, max_length=64)
    assert len(cut["input_ids"]) == 64
    n_answer = sum(label != IGNORE_INDEX for label in full["labels"])
    assert cut["input_ids"][-40:] == full["input_ids"][-40:]  # answer + end of prompt kept
    assert sum(label != IGNORE_INDEX for label in cut["labels"]) == n_answer
    # An answer longer than the budget is cut at its end; the prompt keeps max_length // 2 tokens.
    long_answer = tokenize_example(tokenizer, {"instruction": "Write.", "input": "", "output": "la " * 200}, max_length=64)
    assert len(long_answer["input_ids"]) == 64
    assert long_answer["labels"].count(IGNORE_INDEX) == 32
    with pytest.raises(ValueError, match="lacks the field 'output'"):
        tokenize_example(tokenizer, {"instruction": "x"})


# --- collation ---------------------------------------------------------------------------------
def test_training_collator_pads_right_with_ignored_labels(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case where id-based masking would break
    records = [{"instruction": "Q?", "input": "", "output": "a much longer answer than the other one"},
               {"instruction": "Q?", "input": "", "output": "yes"}]
    features = [tokenize_example(tokenizer, r) for r in records]
    batch = collate_for_training(tokenizer, features)
    n_short = len(features[1]["input_ids"])
    length = len(features[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, length)
    assert batch["input_ids"][1, :n_short].tolist() == features[1]["input_ids"]  # content on the left
    assert (batch["input_ids"][1, n_short:] == tokenizer.pad_token_id).all()
    assert (batch["attention_mask"][1, n_short:] == 0).all() and (batch["attention_mask"][1, :n_short] == 1).all()
    assert (batch["labels"][1, n_short:] == IGNORE_INDEX).all()
    assert batch["labels"][1, n_short - 1] == tokenizer.eos_token_id  # the real eos stays a target
    assert batch["labels"][0].tolist() == features[0]["labels"]
    padded = TrainingCollator(tokenizer, pad_to_multiple_of=8)(features)
    assert padded["input_ids"].shape[1] % 8 == 0
    with pytest.raises(ValueError, match="empty"):
        collate_for_training(tokenizer, [])


def test_generation_collator_pads_left(tokenizer):
    prompts = [build_prompt(tokenizer, "What is the capital of France?"), build_prompt(tokenizer, "Hi")]
    batch = collate_for_generation(tokenizer, prompts)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = len(ids[0]) - len(ids[1])
    assert pad > 0
    assert batch["input_ids"][1, pad:].tolist() == ids[1] and batch["input_ids"][0].tolist() == ids[0]
    assert batch["attention_mask"][1].tolist() == [0] * pad + [1] * len(ids[1])
    assert (batch["attention_mask"][:, -1] == 1).all()  # every prompt ends in the last column
    assert torch.equal(collate_for_generation(tokenizer, ids)["input_ids"], batch["input_ids"])


# --- scoring -----------------------------------------------------------------------------------
def test_scorers_follow_their_stated_rules():
    assert score("topic", [" Sports\n", "sports.", "travel"], ["sports", "sports", "cooking"]) == pytest.approx(1 / 3)
    ref = canonical_json("Mara", 34, "Lyon")
    assert score("extract", [f"  {ref}\n", ref.replace(", ", ","), '{"name": "Mara"}'], [ref] * 3) == pytest.approx(1 / 3)
    assert score("retention", ["The capital is PARIS.", "It is 15.", "5"], ["Paris", "5", "5"]) == pytest.approx(2 / 3)
    assert score("lexicon", ["Red river stone.", "red stone", "stone river red", "red river stone extra"],
                 ["red river stone"] * 4) == pytest.approx((1 + 1 / 3 + 1 / 3 + 1) / 4)
    assert data.word_credit("", "red river stone") == 0
    assert set(data.SCORERS) == set(TASKS)
    with pytest.raises(ValueError, match="No scorer"):
        score("alpaca", ["a"], ["a"])
    with pytest.raises(ValueError, match="pair up"):
        score("topic", ["a", "b"], ["a"])


# --- the base model and the tasks --------------------------------------------------------------
def test_base_model_knows_the_retention_answers():
    """Retention measures forgetting, so the base model must start out (almost) perfect on it."""
    from peftedu.course.models import load_base
    from peftedu.course.evaluation import evaluate

    model, tok = load_base()
    result = evaluate(model, tok, "retention", rows="all")
    wrong = [(e["instruction"], e["prediction"]) for e in result["examples"] if not e["correct"]]
    assert result["n"] == len(data.RETENTION_QUESTIONS) and result["score"] >= 0.9, wrong
