"""The course's tasks: generation, files, loading and scoring.

The course fine-tunes on three small tasks that our own code generates from a fixed seed
(``random.Random``), so every learner gets byte-identical files without a download:

* ``topic`` -- name the topic of a sentence with one label word (sports / cooking / travel /
  technology). Score: accuracy, where an answer counts when ``answer.strip().lower()`` equals the
  label word.
* ``extract`` -- turn a sentence about a person into one line of JSON in the canonical form
  ``{"name": "Mara", "age": 34, "city": "Lyon"}`` (``json.dumps`` with default separators, keys in
  the order name, age, city, age an integer). Score: exact match after stripping whitespace at
  both ends.
* ``lexicon`` -- translate a three-word phrase of Velish, a small invented language, into English word by
  word (``"draidrar leikrux thabaik"`` -> ``"red river stone"``). The sixteen Velish words are made up by this
  module from syllables, so the base model cannot know them: the task needs *new knowledge*, the kind
  of learning that separates the methods (Biderman et al. 2024 find LoRA learns new knowledge less
  than full fine-tuning). Score: the share of the three words translated right, in place (partial
  credit, so a method that learns half the words scores about 0.5).
* ``retention`` -- short general-knowledge questions the base model answers correctly. Score: the
  expected answer appears in the answer as a whole word, ignoring case. A drop after fine-tuning
  on another task measures forgetting (灾难性遗忘, catastrophic forgetting).

The generators' words -- instructions, topic labels, subjects, events, names, cities, jobs,
sentence templates and the retention questions -- are data, in ``data/task_vocabulary.json``;
this module holds only the code that draws from them.

Every record uses the alpaca field names (``instruction``, ``input``, ``output``), so hub
instruction datasets such as alpaca-zh (``shibing624/alpaca-zh``) go through the same code.
Prompts, tokenization and collation live in :mod:`peftedu.course.tokenization`.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable, Iterable

from datasets import load_dataset

from .models import REPO_ROOT, data_dir
from .tokenization import quiet_datasets

TASKS = ("topic", "extract", "lexicon", "retention")
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {
    "topic": {"train": 400, "validation": 100, "test": 100},
    "extract": {"train": 400, "validation": 100, "test": 100},
    "lexicon": {"train": 400, "validation": 100, "test": 100},
}
#: Seed of each generated task (the generator is ``random.Random(seed)``).
TASK_SEEDS = {"topic": 1001, "extract": 2002, "lexicon": 4004, "retention": 3003}
#: How many new tokens an evaluation generates per task (enough for any correct answer + eos).
MAX_NEW_TOKENS = {"topic": 6, "extract": 32, "lexicon": 10, "retention": 24}

# ---------------------------------------------------------------------------------------------
# The vocabulary: the generators' words, read from a JSON file
# ---------------------------------------------------------------------------------------------
#: A fixed path, like the source ledger's: the vocabulary belongs to the generators, so it does not
#: move with ``PEFTEDU_DATA`` (which only says where the generated task files live).
VOCABULARY_PATH = REPO_ROOT / "data" / "task_vocabulary.json"
#: The keys each task's section of the vocabulary must hold.
VOCABULARY_KEYS = {
    "topic": ("instruction", "labels", "subjects", "shared_subjects", "events", "contexts", "templates"),
    "extract": ("instruction", "names", "cities", "jobs", "templates"),
    "lexicon": ("instruction", "onsets", "vowels", "codas", "meanings", "phrase_length"),
    "retention": ("questions",),
}


def load_vocabulary(path: str | Path = VOCABULARY_PATH) -> dict:
    """The task vocabulary (``data/task_vocabulary.json``), checked before any generator draws from it.

    Every section and key of :data:`VOCABULARY_KEYS` is present, no list or object is empty, the
    instructions are not empty, ``topic.subjects`` and ``topic.events`` have one list per label of
    ``topic.labels``, and every retention question has a ``question`` and an ``answer``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The task vocabulary {path} is missing; the task generators read their instructions, "
                                "word lists, templates and retention questions from it (the repository ships it as "
                                "data/task_vocabulary.json).")
    vocabulary = json.loads(path.read_text(encoding="utf-8"))
    for task, keys in VOCABULARY_KEYS.items():
        section = vocabulary.get(task)
        if not isinstance(section, dict):
            raise ValueError(f"{path}: no object {task!r}; it needs one with the keys {keys}.")
        missing = [key for key in keys if key not in section]
        if missing:
            raise ValueError(f"{path}: {task!r} lacks the keys {missing}; it needs {keys}.")
        _check_filled(path, task, section)
        if task == "lexicon" and not (isinstance(section["phrase_length"], int)
                                      and 1 <= section["phrase_length"] <= len(section["meanings"])):
            raise ValueError(f"{path}: lexicon.phrase_length is {section['phrase_length']!r}; it needs an integer "
                             f"from 1 to the number of meanings ({len(section['meanings'])}).")
        if "instruction" in section and not section["instruction"].strip():
            raise ValueError(f"{path}: {task}.instruction is empty; it needs the instruction every record carries.")
    topic = vocabulary["topic"]
    for key in ("subjects", "events"):
        if set(topic[key]) != set(topic["labels"]):
            raise ValueError(f"{path}: topic.{key} has lists for {sorted(topic[key])}; it needs exactly one per label "
                             f"of topic.labels, {sorted(topic['labels'])}.")
    for index, entry in enumerate(vocabulary["retention"]["questions"]):
        if not (isinstance(entry, dict) and entry.get("question") and entry.get("answer")):
            raise ValueError(f"{path}: retention.questions[{index}] is {entry!r}; it needs a non-empty "
                             '"question" and "answer".')
    return vocabulary


def _check_filled(path: Path, where: str, value) -> None:
    """No empty list or object anywhere in ``value`` (``where`` names it in the error, e.g. ``topic.subjects``)."""
    if isinstance(value, (list, dict)) and not value:
        raise ValueError(f"{path}: {where} is empty; the generators need at least one entry to draw from.")
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        _check_filled(path, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]", child)


_VOCABULARY = load_vocabulary()
_TOPIC, _EXTRACT, _LEXICON = _VOCABULARY["topic"], _VOCABULARY["extract"], _VOCABULARY["lexicon"]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Task (a): topic classification
# ---------------------------------------------------------------------------------------------
TOPIC_LABELS = tuple(_TOPIC["labels"])
TOPIC_INSTRUCTION = _TOPIC["instruction"]


def _topic_record(rng: random.Random) -> dict:
    label = rng.choice(TOPIC_LABELS)
    subject = rng.choice(_TOPIC["subjects"][label] + _TOPIC["shared_subjects"])
    sentence = rng.choice(_TOPIC["templates"]).format(
        subject=subject, event=rng.choice(_TOPIC["events"][label]), context=rng.choice(_TOPIC["contexts"])
    )
    return {"instruction": TOPIC_INSTRUCTION, "input": _capitalize(sentence), "output": label}


# ---------------------------------------------------------------------------------------------
# Task (b): extraction to canonical one-line JSON
# ---------------------------------------------------------------------------------------------
EXTRACT_INSTRUCTION = _EXTRACT["instruction"]


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def canonical_json(name: str, age: int, city: str) -> str:
    """The one accepted answer form of ``extract``: ``{"name": "Mara", "age": 34, "city": "Lyon"}``."""
    return json.dumps({"name": name, "age": int(age), "city": city})


def _extract_record(rng: random.Random) -> dict:
    name, city, job = rng.choice(_EXTRACT["names"]), rng.choice(_EXTRACT["cities"]), rng.choice(_EXTRACT["jobs"])
    age = rng.randint(19, 79)
    # {years} and {friends} are distractor numbers: the age is never the only number in those templates.
    sentence = rng.choice(_EXTRACT["templates"]).format(
        name=name, age=age, city=city, job=job, a_job=_with_article(job),
        years=rng.randint(2, age - 16), friends=rng.choice([3, 5, 8, 12, 20, 40]),
    )
    return {"instruction": EXTRACT_INSTRUCTION, "input": _capitalize(sentence),
            "output": canonical_json(name, age, city)}


# ---------------------------------------------------------------------------------------------
# Task (c): lexicon -- new knowledge, an invented language word by word
# ---------------------------------------------------------------------------------------------
LEXICON_INSTRUCTION = _LEXICON["instruction"]


def make_lexicon(seed: int = TASK_SEEDS["lexicon"]) -> dict[str, str]:
    """The Velish-English lexicon: one invented word per English meaning, ``{"draidrar": "red", ...}``.

    Each word is two syllables drawn from the vocabulary's onsets, vowels and codas by
    ``random.Random(seed)``; a word is drawn again if it repeats an earlier one or an English meaning.
    """
    rng = random.Random(seed)
    words: dict[str, str] = {}
    for meaning in _LEXICON["meanings"]:
        while True:
            word = (rng.choice(_LEXICON["onsets"]) + rng.choice(_LEXICON["vowels"]) + rng.choice(_LEXICON["onsets"])
                    + rng.choice(_LEXICON["vowels"]) + rng.choice(_LEXICON["codas"]))
            if word not in words and word not in _LEXICON["meanings"]:
                break
        words[word] = meaning
    return words


LEXICON = make_lexicon()


def _lexicon_record(rng: random.Random) -> dict:
    words = rng.sample(sorted(LEXICON), k=_LEXICON["phrase_length"])
    return {"instruction": LEXICON_INSTRUCTION, "input": " ".join(words),
            "output": " ".join(LEXICON[w] for w in words)}


# ---------------------------------------------------------------------------------------------
# Task (d): retention (general knowledge the base model already has)
# ---------------------------------------------------------------------------------------------
#: (question, expected answer word). Kept only if SmolLM2-135M-Instruct answers it correctly
#: with greedy decoding (checked when the list was written; ``tests/test_data.py`` re-checks that
#: the base model scores >= 0.9).
RETENTION_QUESTIONS = [(entry["question"], entry["answer"]) for entry in _VOCABULARY["retention"]["questions"]]


def _retention_records() -> list[dict]:
    return [{"instruction": question, "input": "", "output": answer} for question, answer in RETENTION_QUESTIONS]


# ---------------------------------------------------------------------------------------------
# Generation and files
# ---------------------------------------------------------------------------------------------
_RECORD_MAKERS = {"topic": _topic_record, "extract": _extract_record, "lexicon": _lexicon_record}


def generate_task(name: str) -> dict[str, list[dict]]:
    """All splits of one task as lists of records, deterministic (``random.Random(TASK_SEEDS[name])``).

    ``topic``/``extract``/``lexicon``: unique inputs, drawn until every split is full, so no sentence appears in
    two splits. ``retention``: ``test`` holds every question, ``validation`` a seeded subset of 10.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; the generated tasks are {TASKS}.")
    rng = random.Random(TASK_SEEDS[name])
    if name == "retention":
        records = _retention_records()
        return {"validation": rng.sample(records, k=min(10, len(records))), "test": records}
    sizes = SPLIT_SIZES[name]
    total = sum(sizes.values())
    seen, records = set(), []
    for _ in range(100 * total):
        record = _RECORD_MAKERS[name](rng)
        if record["input"] not in seen:
            seen.add(record["input"])
            records.append(record)
            if len(records) == total:
                break
    else:  # pragma: no cover - only if the word lists shrink too far
        raise RuntimeError(f"Could only make {len(records)} unique {name} records; need {total}.")
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = records[start:start + sizes[split]]
        start += sizes[split]
    return splits


def tasks_dir(root: str | Path | None = None) -> Path:
    """The folder of the generated task files: ``root`` if given, else ``data/tasks`` (``$PEFTEDU_DATA/tasks``)."""
    return Path(root) if root is not None else data_dir() / "tasks"


def write_tasks(root: str | Path | None = None) -> dict[str, dict[str, Path]]:
    """Write every task to ``<root>/<task>/<split>.jsonl`` (root: ``data/tasks``); returns the paths."""
    written = {}
    for name in TASKS:
        folder = tasks_dir(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = {}
        for split, records in generate_task(name).items():
            path = folder / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            written[name][split] = path
    return written


_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "dev": "validation", "test": "test"}


def _json_files_by_split(folder: Path) -> dict[str, list[str]]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    data_files: dict[str, list[str]] = {}
    for path in files:
        split = _SPLIT_ALIASES.get(path.stem.lower(), "train")  # unnamed files are training data
        data_files.setdefault(split, []).append(str(path))
    return data_files


def load_task(name: str, split: str | None = None, *, root: str | Path | None = None):
    """Load a task as a HF ``datasets`` ``DatasetDict`` (or one ``Dataset`` when ``split`` is given).

    * one of :data:`TASKS` -> the JSON Lines files in ``data/tasks/<name>/`` (json builder);
    * a local folder of ``.json``/``.jsonl`` files -> the json builder; a file's stem names its
      split (``train``, ``validation``/``valid``/``dev``, ``test``), any other file goes to ``train``;
    * anything else -> ``datasets.load_dataset(name)``, e.g. the hub id ``shibing624/alpaca-zh``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"task must be a task name {TASKS}, a folder or a hub id; got {name!r}.")
    if name in TASKS:
        folder = tasks_dir(root) / name
        data_files = {s: str(folder / f"{s}.jsonl") for s in SPLITS if (folder / f"{s}.jsonl").exists()}
        if not data_files:
            raise FileNotFoundError(f"No files for task {name!r} in {folder}; create them with "
                                    "peftedu.course.data.write_tasks() (they are deterministic).")
        with quiet_datasets():
            dataset = load_dataset("json", data_files=data_files)
    elif Path(name).is_dir():
        data_files = _json_files_by_split(Path(name))
        if not data_files:
            raise ValueError(f"Folder {name!r} holds no .json or .jsonl files.")
        with quiet_datasets():
            dataset = load_dataset("json", data_files=data_files)
    else:
        try:
            with quiet_datasets():
                dataset = load_dataset(name)
        except Exception as error:  # offline, misspelt, private...: say what was expected
            raise ValueError(
                f"Unknown task {name!r}: not one of {TASKS}, not a local folder of JSON files, and "
                f"datasets.load_dataset could not load it as a hub dataset ({type(error).__name__}: {error})."
            ) from error
    if split is None:
        return dataset
    if split not in dataset:
        raise ValueError(f"Task {name!r} has no split {split!r}; it has {sorted(dataset)}.")
    return dataset[split]


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------
def label_match(prediction: str, reference: str) -> bool:
    """``topic``: the stripped, lower-cased answer equals the label word."""
    return prediction.strip().lower() == reference.strip().lower()


def exact_match(prediction: str, reference: str) -> bool:
    """``extract``: equal after stripping whitespace at both ends."""
    return prediction.strip() == reference.strip()


def contains_word(prediction: str, reference: str) -> bool:
    """``retention``: the reference occurs as a whole word (``\\b`` boundaries), ignoring case."""
    return re.search(rf"\b{re.escape(reference.strip())}\b", prediction, flags=re.IGNORECASE) is not None


def word_credit(prediction: str, reference: str) -> float:
    """``lexicon``: the share of the reference's words that the answer has in the same place (lower case,
    punctuation around a word ignored); ``"red river stone"`` against ``"red stone"`` scores 1/3."""
    said = [w.strip(".,;:!?\"'").lower() for w in prediction.split()]
    wanted = reference.lower().split()
    return sum(i < len(said) and said[i] == w for i, w in enumerate(wanted)) / len(wanted)


#: Per-example scorer of each task: ``(prediction, reference) -> credit``, True/False or a share in [0, 1].
SCORERS: dict[str, Callable[[str, str], float]] = {
    "topic": label_match,
    "extract": exact_match,
    "lexicon": word_credit,
    "retention": contains_word,
}


def score(task: str, predictions: Iterable[str], references: Iterable[str]) -> float:
    """Mean of the task's per-example credit over ``predictions`` vs ``references`` (in [0, 1])."""
    if task not in SCORERS:
        raise ValueError(f"No scorer for task {task!r}; scored tasks are {sorted(SCORERS)}.")
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up.")
    if not predictions:
        raise ValueError("Cannot score zero predictions.")
    return sum(SCORERS[task](p, r) for p, r in zip(predictions, references)) / len(predictions)


if __name__ == "__main__":  # python -m peftedu.course.data  -> (re)write data/tasks
    for task, paths in write_tasks().items():
        print(task, {split: str(path) for split, path in paths.items()})
