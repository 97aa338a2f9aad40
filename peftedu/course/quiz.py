"""The self-check quiz over the interview bank: :class:`SelfCheck`, the state of a quiz, and
:func:`self_check_widget`, its ipywidgets front end.

The state is plain Python -- a filtered pool of :data:`~peftedu.course.interview.QUESTIONS`, the current question,
the score -- graded by :func:`~peftedu.course.interview.check_answer`; the widget only wires menus and buttons to
it, so notebooks still run headless and the tests drive the same object a learner clicks.
"""

from __future__ import annotations

import html
from typing import Sequence

import ipywidgets as widgets

from .explorers import explorer_box
from .interview import LEVELS, QUESTIONS, TOPICS, AnswerCheck, Question, check_answer, select_questions


class SelfCheck:
    """The state of a quiz: a filtered pool of questions, the current one, and the score.

    >>> quiz = SelfCheck(topic="lora", multiple_choice=True)
    >>> quiz.current.id, quiz.answer(0).correct
    ('lora-init', True)
    """

    def __init__(self, questions: Sequence[Question] = QUESTIONS, **filters):
        self.questions = tuple(questions)
        self.correct = self.attempted = 0
        self.set_filter(**filters)

    def set_filter(self, topic=None, level=None, multiple_choice=None, max_level=None) -> None:
        """Choose the pool (``select_questions``'s filters) and go back to its first question."""
        pool = select_questions(topic, level, max_level=max_level, multiple_choice=multiple_choice,
                                questions=self.questions)
        self.pool, self.index, self.answered = pool, 0, False

    @property
    def current(self) -> Question | None:
        return self.pool[self.index] if self.pool else None

    def to_first_multiple_choice(self) -> Question | None:
        """Go to the pool's first multiple-choice question (stay put if it has none)."""
        for i, q in enumerate(self.pool):
            if q.is_multiple_choice:
                self.index, self.answered = i, False
                break
        return self.current

    def next(self) -> Question | None:
        """Move to the next question of the pool (wrapping around)."""
        if self.pool:
            self.index = (self.index + 1) % len(self.pool)
            self.answered = False
        return self.current

    def answer(self, choice: int | str) -> AnswerCheck:
        """Grade ``choice`` for the current question; only the first answer to a question counts in the score."""
        if self.current is None:
            raise ValueError("No question matches the filter.")
        result = check_answer(self.current, choice)
        if not self.answered:
            self.attempted += 1
            self.correct += result.correct
            self.answered = True
        return result

    @property
    def score(self) -> str:
        return f"{self.correct} / {self.attempted} correct"


def _question_html(quiz: SelfCheck) -> str:
    q = quiz.current
    if q is None:
        return "<i>No question matches this filter.</i>"
    return (f"<b>{quiz.index + 1} / {len(quiz.pool)} · {html.escape(LEVELS[q.level])} · {html.escape(TOPICS[q.topic])}"
            f"</b><br>{html.escape(q.question)}")


#: The value of the topic and level menus' first entry: no filter (ipywidgets reserves ``None`` for "no selection").
ALL = "all"

#: The line under the self-check's opening question: the buttons do nothing without a kernel.
QUIZ_NOTE = "Run this cell in a live notebook to take the quiz: the controls need a running kernel."


def filter_options(questions: Sequence[Question] = QUESTIONS) -> tuple[list[tuple[str, str]], list[tuple[str, object]]]:
    """The topic and level menus of the self-check: ``(label, value)`` pairs, each label with its question count,
    ``("all topics (N questions)", "all")`` first, then e.g. ``("LoRA: n questions", "lora")``; topics without a
    question are left out."""
    by_topic = {key: sum(q.topic == key for q in questions) for key in TOPICS}
    by_level = {key: sum(q.level == key for q in questions) for key in LEVELS}

    def count(n):
        return f"{n} question{'' if n == 1 else 's'}"

    topics = [(f"all topics ({count(len(questions))})", ALL)] + [
        (f"{label}: {count(n)}", key) for key, label in TOPICS.items() if (n := by_topic[key])]
    levels = [(f"all levels ({count(len(questions))})", ALL)] + [
        (f"{label}: {count(n)}", key) for key, label in LEVELS.items() if (n := by_level[key])]
    return topics, levels


def question_text(quiz: SelfCheck) -> str:
    """The current question as plain text: position, level, topic, the question and its lettered choices."""
    q = quiz.current
    if q is None:
        return "No question matches this filter."
    lines = [f"{quiz.index + 1} / {len(quiz.pool)} · {LEVELS[q.level]} · {TOPICS[q.topic]}", q.question]
    lines += [f"  {chr(ord('a') + i)}) {choice}" for i, choice in enumerate(q.choices)]
    return "\n".join(lines)


def self_check_widget(questions: Sequence[Question] = QUESTIONS, static: bool = True):
    """Topic and level menus, the question, its choices, Check / Show answer / Next buttons, and the score.

    Opens on the first multiple-choice question (and does so again whenever a menu changes the pool). With
    ``static=True`` it first prints that question and :data:`QUIZ_NOTE`, what a view without a kernel can show.
    Returns an ipywidgets ``VBox`` whose ``quiz`` attribute is the :class:`SelfCheck` it drives.
    """
    quiz = SelfCheck(questions)
    quiz.to_first_multiple_choice()
    if static:
        print("Self-check, opening question:")
        print(question_text(quiz))
        print(QUIZ_NOTE)
    topic_options, level_options = filter_options(quiz.questions)
    topic = widgets.Dropdown(options=topic_options, value=ALL, description="topic", layout=widgets.Layout(width="30em"))
    level = widgets.Dropdown(options=level_options, value=ALL, description="level", layout=widgets.Layout(width="22em"))
    question = widgets.HTML()
    choices = widgets.RadioButtons(options=[], value=None, layout=widgets.Layout(width="max-content"))
    check = widgets.Button(description="Check", button_style="primary")
    reveal = widgets.Button(description="Show answer")
    following = widgets.Button(description="Next")
    feedback = widgets.HTML()
    score = widgets.HTML()

    def show():
        q = quiz.current
        question.value = _question_html(quiz)
        choices.options = [] if q is None else list(q.choices)
        choices.value = None
        choices.layout.display = None if q is not None and q.is_multiple_choice else "none"
        check.disabled = q is None or not q.is_multiple_choice
        reveal.disabled = following.disabled = q is None
        feedback.value = ""
        score.value = f"<small>{quiz.score}</small>"

    def on_filter(_change=None):
        quiz.set_filter(topic=None if topic.value == ALL else topic.value,
                        level=None if level.value == ALL else level.value)
        quiz.to_first_multiple_choice()
        show()

    def on_check(_button=None):
        if choices.value is None:
            feedback.value = "<i>Pick an answer first.</i>"
            return
        result = quiz.answer(choices.value)
        feedback.value = html.escape(result.feedback()) + f"<br><small>See: {html.escape(quiz.current.where_text())}</small>"
        score.value = f"<small>{quiz.score}</small>"

    def on_reveal(_button=None):
        q = quiz.current
        feedback.value = html.escape(q.answer) + f"<br><small>See: {html.escape(q.where_text())}</small>"

    def on_next(_button=None):
        quiz.next()
        show()

    topic.observe(on_filter, "value")
    level.observe(on_filter, "value")
    check.on_click(on_check)
    reveal.on_click(on_reveal)
    following.on_click(on_next)
    show()
    box = explorer_box([widgets.HBox([topic, level]), question, choices,
                        widgets.HBox([check, reveal, following]), feedback, score], "self-check quiz")
    box.quiz = quiz
    return box


__all__ = ["ALL", "QUIZ_NOTE", "SelfCheck", "filter_options", "question_text", "self_check_widget"]
