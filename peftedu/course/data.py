"""Tasks, prompts, tokenization and collation: everything between raw records and a batch.

The course fine-tunes on three small tasks that our own code generates from a fixed seed
(``random.Random``), so every learner gets byte-identical files without a download:

* ``topic`` -- name the topic of a sentence with one label word (sports / cooking / travel /
  technology). Score: accuracy, where an answer counts when ``answer.strip().lower()`` equals the
  label word.
* ``extract`` -- turn a sentence about a person into one line of JSON in the canonical form
  ``{"name": "Mara", "age": 34, "city": "Lyon"}`` (``json.dumps`` with default separators, keys in
  the order name, age, city, age an integer). Score: exact match after stripping whitespace at
  both ends.
* ``retention`` -- short general-knowledge questions the base model answers correctly. Score: the
  expected answer appears in the answer as a whole word, ignoring case. A drop after fine-tuning
  on another task measures forgetting (灾难性遗忘, catastrophic forgetting).

Every record uses the alpaca field names (``instruction``, ``input``, ``output``), so hub
instruction datasets such as alpaca-zh (``shibing624/alpaca-zh``) go through the same code.

Conventions (the classic silent bugs of causal-LM fine-tuning, each one tested):

* labels of the prompt tokens are ``-100`` (ignored by the loss); the answer is followed by the
  eos token, which *is* labelled, so the model learns to stop;
* training batches are padded on the RIGHT, labels with ``-100``, attention mask 0 on pads --
  the pad token may equal the eos token (SmolLM2: both ``<|im_end|>``), so pads are never found
  by comparing ids;
* generation batches are padded on the LEFT, so every prompt ends where generation starts.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

TASKS = ("topic", "extract", "retention")
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {
    "topic": {"train": 400, "validation": 100, "test": 100},
    "extract": {"train": 400, "validation": 100, "test": 100},
}
#: Seed of each generated task (the generator is ``random.Random(seed)``).
TASK_SEEDS = {"topic": 1001, "extract": 2002, "retention": 3003}
#: How many new tokens an evaluation generates per task (enough for any correct answer + eos).
MAX_NEW_TOKENS = {"topic": 6, "extract": 32, "retention": 24}
IGNORE_INDEX = -100
#: The plain prompt format of the source tutorials, used when a tokenizer has no chat template.
PLAIN_PROMPT = "Human: {instruction}\n{input}\n\nAssistant: "

# ---------------------------------------------------------------------------------------------
# Task (a): topic classification
# ---------------------------------------------------------------------------------------------
TOPIC_LABELS = ("sports", "cooking", "travel", "technology")
TOPIC_INSTRUCTION = (
    "What is the topic of the following sentence? "
    "Answer with exactly one word: sports, cooking, travel or technology."
)
_TOPIC_SUBJECTS = {
    "sports": ["the striker", "our goalkeeper", "the head coach", "the marathon runner",
               "the tennis champion", "the home team", "the young cyclist", "the rugby captain"],
    "cooking": ["my grandmother", "the head chef", "the village baker", "a food blogger",
                "the new bistro", "our cooking class", "the pastry student", "the restaurant owner"],
    "travel": ["the backpacker", "a group of tourists", "the travel writer", "our family",
               "the exchange student", "a retired couple", "the tour guide", "the cruise passengers"],
    "technology": ["the software engineer", "a small startup", "the app developer", "the research lab",
                   "the phone maker", "our IT department", "the robotics team", "the chip designer"],
}
_TOPIC_EVENTS = {
    "sports": [
        "scored twice in the final ten minutes", "trained every morning before the championship",
        "broke the national record in the 400 metres", "lost the semi-final on penalties",
        "signed a three-year contract with a rival club", "won the gold medal at the regional games",
        "was sent off after a rough tackle", "finished the race with a sprained ankle",
        "celebrated promotion to the first division", "practised free throws until dark",
        "beat the defending champion in straight sets", "announced retirement after twenty seasons",
    ],
    "cooking": [
        "roasted the vegetables with garlic and rosemary", "baked a loaf of sourdough bread",
        "simmered the tomato sauce for three hours", "whisked eggs and sugar for a sponge cake",
        "shared a recipe for spicy noodle soup", "seasoned the grilled fish with lemon and salt",
        "kneaded the dough for fresh pasta", "caramelised onions for a rich soup",
        "marinated the chicken in yoghurt and spices", "burned the pancakes while chatting",
        "tested a vegan chocolate mousse", "chopped fresh herbs for the salad dressing",
    ],
    "travel": [
        "booked a cheap flight to Lisbon", "missed the night train to Vienna",
        "hiked to a mountain village with a tiny guesthouse", "renewed a passport just before the trip",
        "explored the old harbour by ferry", "checked into a hostel near the central station",
        "rented a camper van for a coastal road trip", "lost the luggage during a stopover in Dubai",
        "visited three museums in a single day abroad", "waited for hours at a border crossing",
        "bought a rail pass to tour the Alps", "slept in an airport lounge after a cancelled flight",
    ],
    "technology": [
        "released an update that fixes the battery drain", "built a robot that sorts recycling",
        "upgraded the laptop with more memory", "launched an app for sharing photos privately",
        "wrote a program that detects spam emails", "installed a faster wireless router",
        "trained a neural network to recognise handwriting", "patched a security bug in the web server",
        "designed a smaller and cheaper processor", "moved the company files to cloud storage",
        "fixed a crash in the smartphone camera software", "presented a prototype with a foldable screen",
    ],
}
_SHARED_SUBJECTS = ["my cousin", "our neighbour", "a friend of mine", "my older sister", "a colleague from work"]
_TOPIC_CONTEXTS = ["", " on Saturday", " last week", " earlier this year", " yesterday afternoon",
                   " this morning", " during the holidays", " despite the bad weather"]
_TOPIC_TEMPLATES = [
    "{subject} {event}{context}.",
    "Everyone was talking about how {subject} {event}{context}.",
    "According to the local news, {subject} {event}{context}.",
    "I heard that {subject} {event}{context}.",
    "It surprised nobody that {subject} {event}{context}.",
    "Quick update: {subject} {event}{context}.",
]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _topic_record(rng: random.Random) -> dict:
    label = rng.choice(TOPIC_LABELS)
    subject = rng.choice(_TOPIC_SUBJECTS[label] + _SHARED_SUBJECTS)
    sentence = rng.choice(_TOPIC_TEMPLATES).format(
        subject=subject, event=rng.choice(_TOPIC_EVENTS[label]), context=rng.choice(_TOPIC_CONTEXTS)
    )
    return {"instruction": TOPIC_INSTRUCTION, "input": _capitalize(sentence), "output": label}


# ---------------------------------------------------------------------------------------------
# Task (b): extraction to canonical one-line JSON
# ---------------------------------------------------------------------------------------------
EXTRACT_INSTRUCTION = (
    "Extract the name, age and city of the person in the text. "
    'Reply with one line of JSON with the keys "name", "age" and "city".'
)
_NAMES = ["Mara", "Jonas", "Aiko", "Luca", "Priya", "Tomas", "Elena", "Kwame", "Sofia", "Mateo",
          "Ingrid", "Omar", "Hana", "Felix", "Amara", "Dmitri", "Lucia", "Noah", "Yara", "Wei",
          "Chloe", "Ravi", "Astrid", "Diego", "Leila", "Sven", "Nadia", "Kenji", "Zoe", "Arjun",
          "Freya", "Malik", "Iris", "Pablo", "Greta", "Tariq", "Mei", "Oscar", "Selin", "Bruno"]
_CITIES = ["Lyon", "Porto", "Osaka", "Nairobi", "Toronto", "Krakow", "Seville", "Melbourne", "Bergen",
           "Lima", "Hanoi", "Munich", "Dublin", "Cairo", "Austin", "Bologna", "Tbilisi", "Quito",
           "Gdansk", "Adelaide", "Marseille", "Valencia", "Busan", "Accra", "Montreal", "Leeds",
           "Utrecht", "Tallinn", "Cusco", "Chennai"]
_JOBS = ["nurse", "carpenter", "teacher", "pilot", "baker", "architect", "journalist", "lawyer",
         "gardener", "mechanic", "librarian", "photographer", "engineer", "electrician"]
# {years} and {friends} are distractor numbers: the age is never the only number in those sentences.
_EXTRACT_TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, {a_job} aged {age} from {city}.",
    "At {age}, {name} moved to {city} to work as {a_job}.",
    "{name} ({age}) works as {a_job} in {city}.",
    "In {city}, the {age}-year-old {job} {name} opened a small shop.",
    "{name}, aged {age}, has spent {years} years in {city}.",
    "Our new {job}, {name}, is {age} and commutes to {city} every day.",
    "Born in {city}, {name} is now {age} and works as {a_job}.",
    "The {job} {name} from {city} celebrated turning {age} with {friends} friends.",
    "After {years} years as {a_job}, {name} ({age}) still lives in {city}.",
]


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def canonical_json(name: str, age: int, city: str) -> str:
    """The one accepted answer form of ``extract``: ``{"name": "Mara", "age": 34, "city": "Lyon"}``."""
    return json.dumps({"name": name, "age": int(age), "city": city})


def _extract_record(rng: random.Random) -> dict:
    name, city, job = rng.choice(_NAMES), rng.choice(_CITIES), rng.choice(_JOBS)
    age = rng.randint(19, 79)
    sentence = rng.choice(_EXTRACT_TEMPLATES).format(
        name=name, age=age, city=city, job=job, a_job=_with_article(job),
        years=rng.randint(2, age - 16), friends=rng.choice([3, 5, 8, 12, 20, 40]),
    )
    return {"instruction": EXTRACT_INSTRUCTION, "input": _capitalize(sentence),
            "output": canonical_json(name, age, city)}


# ---------------------------------------------------------------------------------------------
# Task (c): retention (general knowledge the base model already has)
# ---------------------------------------------------------------------------------------------
#: (question, expected answer word). Kept only if SmolLM2-135M-Instruct answers it correctly
#: with greedy decoding (checked when the list was written; ``tests/test_data.py`` re-checks that
#: the base model scores >= 0.9).
RETENTION_QUESTIONS = [
    ("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"), ("What is the capital of the United Kingdom?", "London"),
    ("What is the capital of Russia?", "Moscow"), ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"), ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Greece?", "Athens"), ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Norway?", "Oslo"), ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Austria?", "Vienna"), ("What is the capital of Thailand?", "Bangkok"),
    ("What is the capital of South Korea?", "Seoul"), ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Poland?", "Warsaw"), ("What is the capital of the Netherlands?", "Amsterdam"),
    ("What is the capital of India?", "Delhi"), ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Cuba?", "Havana"),
    ("What is 2 + 3?", "5"), ("What is 6 + 6?", "12"),
    ("How many days are in a week?", "7"), ("How many sides does a triangle have?", "three"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What is the opposite of hot?", "cold"), ("What is the opposite of up?", "down"),
    ("What is the opposite of day?", "night"),
    ("What is the chemical formula of water?", "H2O"),
    ("What is the boiling point of water in degrees Celsius?", "100"),
    ("What is the tallest mountain in the world?", "Everest"), ("What is the largest ocean on Earth?", "Pacific"),
    ("What language is spoken in Brazil?", "Portuguese"), ("What is the main language of Mexico?", "Spanish"),
    ("What is the first month of the year?", "January"), ("What is the largest mammal?", "whale"),
    ("Which organ pumps blood through the body?", "heart"), ("What is the currency of Japan?", "yen"),
    ("Who painted the Mona Lisa?", "Leonardo"), ("What gas do humans need to breathe?", "oxygen"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("Who was the first person to walk on the Moon?", "Armstrong"),
    ("Which continent is Kenya in?", "Africa"), ("Which continent is France in?", "Europe"),
]


def _retention_records() -> list[dict]:
    return [{"instruction": question, "input": "", "output": answer} for question, answer in RETENTION_QUESTIONS]


# ---------------------------------------------------------------------------------------------
# Generation and files
# ---------------------------------------------------------------------------------------------
_RECORD_MAKERS = {"topic": _topic_record, "extract": _extract_record}


def generate_task(name: str) -> dict[str, list[dict]]:
    """All splits of one task as lists of records, deterministic (``random.Random(TASK_SEEDS[name])``).

    ``topic``/``extract``: unique inputs, drawn until every split is full, so no sentence appears in
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
    if root is not None:
        return Path(root)
    from .models import data_dir

    return data_dir() / "tasks"


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
    from datasets import load_dataset

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
# Prompts and tokenization
# ---------------------------------------------------------------------------------------------
def build_prompt(tokenizer, instruction: str, input: str = "") -> str:
    """The text the model sees before its answer.

    With a chat template: one user message (instruction, then the input on a new line) and the
    generation prompt, e.g. for SmolLM2 ``...<|im_start|>user\\n{message}<|im_end|>\\n<|im_start|>assistant\\n``.
    Without one: the source tutorials' plain format ``"Human: {instruction}\\n{input}\\n\\nAssistant: "``.
    """
    if getattr(tokenizer, "chat_template", None):
        content = f"{instruction}\n{input}" if input else instruction
        return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True, tokenize=False)
    return PLAIN_PROMPT.format(instruction=instruction, input=input)


def _ids(tokenizer, text: str) -> list[int]:
    # add_special_tokens=False: the prompt format already holds every special token it needs.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(tokenizer, example: dict, max_length: int = 256) -> dict[str, list[int]]:
    """One record -> ``input_ids``, ``attention_mask`` and ``labels`` (lists of ints).

    ``input_ids = prompt + answer + [eos]``; ``labels = [-100] * len(prompt) + answer + [eos]``.
    Truncation keeps the answer: when the pair is longer than ``max_length`` the prompt loses tokens
    from its *start* (its end, the assistant marker, stays next to the answer) down to
    ``max_length // 2`` tokens; only an answer longer than the rest is cut, at its end.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a prompt token and an answer token); got {max_length}.")
    for field in ("instruction", "output"):
        if field not in example:
            raise ValueError(f"Record lacks the field {field!r}; records need instruction, input and output "
                             f"(alpaca names); got fields {sorted(example)}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; the answer must end with one so the model learns to stop.")
    prompt = _ids(tokenizer, build_prompt(tokenizer, example["instruction"], example.get("input") or ""))
    answer = _ids(tokenizer, example["output"]) + [tokenizer.eos_token_id]
    if len(prompt) + len(answer) > max_length:
        prompt_budget = max(max_length - len(answer), min(len(prompt), max_length // 2))
        prompt = prompt[len(prompt) - prompt_budget:]
        answer = answer[:max_length - len(prompt)]
    return {
        "input_ids": prompt + answer,
        "attention_mask": [1] * (len(prompt) + len(answer)),
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
    }


@contextlib.contextmanager
def quiet_datasets():
    """No ``datasets`` progress bars inside: they appear only when a result is not cached yet, so a notebook's
    output would depend on what ran before (nbval compares outputs)."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


def tokenize_dataset(tokenizer, dataset, max_length: int = 256):
    """``tokenize_example`` over a ``datasets.Dataset`` (raw columns removed) or a list of records."""
    if isinstance(dataset, (list, tuple)):
        return [tokenize_example(tokenizer, record, max_length) for record in dataset]
    with quiet_datasets():
        return dataset.map(lambda r: tokenize_example(tokenizer, r, max_length),
                           remove_columns=dataset.column_names, desc="tokenize")


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------
def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token; set one, e.g. tokenizer.pad_token = tokenizer.eos_token.")
    return tokenizer.pad_token_id


class TrainingCollator:
    """Features from :func:`tokenize_example` -> a RIGHT-padded batch of tensors.

    Pads ``input_ids`` with the pad id, ``attention_mask`` with 0 and ``labels`` with -100, all to
    the longest example (times ``pad_to_multiple_of`` if given). Use as ``DataLoader(collate_fn=...)``.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_token_id = _pad_id(tokenizer)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty list of features.")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            ids = list(f["input_ids"])
            labels = list(f["labels"]) if "labels" in f else list(ids)
            mask = list(f.get("attention_mask", [1] * len(ids)))
            if not len(ids) == len(labels) == len(mask):
                raise ValueError(f"input_ids, labels and attention_mask differ in length: "
                                 f"{len(ids)}, {len(labels)}, {len(mask)}.")
            pad = length - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["attention_mask"].append(mask + [0] * pad)
            batch["labels"].append(labels + [IGNORE_INDEX] * pad)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def collate_for_training(tokenizer, features: Sequence[dict]) -> dict[str, torch.Tensor]:
    """One right-padded training batch (see :class:`TrainingCollator`)."""
    return TrainingCollator(tokenizer)(features)


def collate_for_generation(tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Prompts (strings, or token-id lists) -> a LEFT-padded batch: ``input_ids``, ``attention_mask``.

    Left padding puts every prompt's last token in the last column, where ``generate`` appends.
    """
    if len(prompts) == 0:
        raise ValueError("Cannot collate an empty list of prompts.")
    pad_id = _pad_id(tokenizer)
    rows = [_ids(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    length = max(len(r) for r in rows)
    input_ids = [[pad_id] * (length - len(r)) + r for r in rows]
    attention_mask = [[0] * (length - len(r)) + [1] * len(r) for r in rows]
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long)}


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


#: Per-example scorer of each task: ``(prediction, reference) -> bool``.
SCORERS: dict[str, Callable[[str, str], bool]] = {
    "topic": label_match,
    "extract": exact_match,
    "retention": contains_word,
}


def score(task: str, predictions: Iterable[str], references: Iterable[str]) -> float:
    """Mean of the task's per-example scorer over ``predictions`` vs ``references`` (in [0, 1])."""
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
