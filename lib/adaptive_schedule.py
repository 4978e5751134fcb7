"""``stop_at_first_correct``'s schedule: which requests each question draws next, from graded summaries.

A question draws its samples in rounds. Round r asks for its missing sample indices below
``min(n, r * samples_per_request)`` (:func:`lib.sample_store.plan_requests`: one chunk, plus the indices of
earlier engine-error rows), and the question stops after the round whose rows put a correct sample in its
contiguous stored prefix (:func:`lib.metrics_aggregate.prefix_first_success`, the rule the adaptive metrics
read), or after the round that reaches n. The rounds of different questions are independent, so a driver
starts a question's next round as soon as its previous round is graded: no barrier across questions, and
the requests and sample indices are those of a run in lock-step rounds.

The schedule starts from the stored rows (resume: done questions draw nothing, the others continue where
their rows end) and then learns only from ``GradeAndStore``'s summaries (``lib.schemas.GRADE_SUMMARY_COLUMNS``);
it reads the store again only for a round whose rows were partly engine errors. Pure: no Ray, no engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lib.metrics_aggregate import prefix_first_success
from lib.sample_store import ENGINE_ERROR, plan_requests
from lib.schemas import FINISH_REASON, KIND, QUESTION_ID, SAMPLE_IDX, STATUS, check_columns

STORED_COLUMNS = (QUESTION_ID, SAMPLE_IDX, STATUS, FINISH_REASON)  # what the schedule reads of stored samples


@dataclass
class _Question:
    question: Any
    have: set[int]  # stored sample indices that are not engine errors (SampleStore.existing): not drawn again
    present: set[int]  # stored sample indices, engine-error rows included (the prefix rule counts them)
    stored_correct: int | None  # the smallest stored correct sample_idx < n
    target: int = 0  # this round draws the missing indices below target
    requested: list[int] = field(default_factory=list)  # this round's sample indices
    pending: int = 0  # of those, not graded yet
    correct: int = 0  # this round's correct samples
    errors: int = 0  # this round's engine-error rows
    finished: bool = False


class AdaptiveSchedule:
    """Request rows (``lib.schemas.REQUEST_COLUMNS``) for :meth:`start` and after each :meth:`graded` summary.

    ``samples``: the stored sample rows (``STORED_COLUMNS``); ``greedy_done``: question_id -> stored greedy
    indices (``SampleStore.existing("greedy")``); ``stored_indices(qid)``: that question's non-error stored
    indices, read again after a round with some engine errors.
    """

    def __init__(self, questions: list[Any], samples: pa.Table, greedy_done: Mapping[str, set[int]], *,
                 samples_per_question: int, samples_per_request: int, greedy: bool,
                 stored_indices: Callable[[str], set[int]]):
        check_columns(samples.column_names, STORED_COLUMNS, "adaptive schedule: the stored sample rows")
        self.n, self.chunk, self.stored_indices = samples_per_question, samples_per_request, stored_indices
        rows: dict[str, list[tuple[int, str | None, str | None]]] = {}
        for qid, idx, status, finish in zip(*(samples.column(c).to_pylist() for c in STORED_COLUMNS)):
            if idx < self.n:
                rows.setdefault(qid, []).append((idx, status, finish))
        self.questions: dict[str, _Question] = {}
        for q in questions:
            mine = rows.get(q.id, [])
            correct = [idx for idx, status, _ in mine if status == "correct"]
            self.questions[q.id] = _Question(q, {idx for idx, _, finish in mine if finish != ENGINE_ERROR},
                                             {idx for idx, _, _ in mine}, min(correct) if correct else None)
        self.greedy_wanted = [q for q in questions if greedy and 0 not in greedy_done.get(q.id, ())]
        self.greedy_pending = {q.id for q in self.greedy_wanted}
        self.stopped: list[tuple[str, bool, int]] = []  # (question_id, solved, samples stored) as questions stop

    def start(self) -> list[dict]:
        """The first requests: each unfinished question's first round with something to draw, after its
        greedy request (for every question without a stored greedy sample)."""
        greedy = {q.id: plan_requests([q], {}, {}, samples_per_question=0, samples_per_request=1, greedy=True)
                  for q in self.greedy_wanted}
        out = []
        for qid, state in self.questions.items():
            out += greedy.get(qid, [])
            if self._first_success(state) is not None:
                state.finished = True
                continue
            out += self._next_round(state)
        return out

    def graded(self, summary: Mapping[str, list]) -> list[dict]:
        """Take one ``GradeAndStore`` summary; returns the requests of the rounds it completes."""
        out = []
        for qid, kind, num, correct, errors in zip(*(summary[c] for c in (QUESTION_ID, KIND, "num_samples", "num_correct",
                                                                               "num_errors"))):
            if kind == "greedy":
                self.greedy_pending.discard(qid)
                continue
            state = self.questions[qid]
            state.pending -= int(num)
            state.correct += int(correct)
            state.errors += int(errors)
            assert state.pending >= 0, f"{qid}: more graded samples than requested"
            if state.pending == 0 and not state.finished:
                out += self._round_done(state)
        return out

    def done(self) -> bool:
        return not self.greedy_pending and all(s.finished for s in self.questions.values())

    def samples_left(self) -> int:
        """Samples still to draw at most: greedy ones, rounds in flight, and every unfinished question's
        missing indices beyond its round (an upper bound: a question may stop earlier)."""
        left = len(self.greedy_pending)
        for s in self.questions.values():
            if not s.finished:
                left += s.pending + sum(1 for i in range(s.target, self.n) if i not in s.have)
        return left

    def _first_success(self, state: _Question) -> int | None:
        """The first correct sample_idx of the question's contiguous stored prefix (None: not done)."""
        if state.stored_correct is None:
            return None
        return prefix_first_success([(i, "correct" if i == state.stored_correct else None) for i in state.present])[0]

    def _round_done(self, state: _Question) -> list[dict]:
        qid = state.question.id
        if state.errors == 0:
            state.have.update(state.requested)
        elif state.errors < len(state.requested):  # some rows of the round were engine errors: which, the store says
            state.have = set(self.stored_indices(qid))
        state.present.update(state.requested)  # every index below target now has a row (an error row counts)
        solved = state.correct > 0 or self._first_success(state) is not None
        if solved or state.target >= self.n:
            state.finished = True
            self.stopped.append((qid, solved, len(state.present)))
            return []
        return self._next_round(state)

    def _next_round(self, state: _Question) -> list[dict]:
        """Advance the question to its next round with something to draw (none: the question is finished)."""
        while state.target < self.n:
            state.target = min(self.n, state.target + self.chunk)
            requests = plan_requests([state.question], {state.question.id: state.have}, {}, samples_per_question=state.target,
                                     samples_per_request=self.chunk, greedy=False)
            if requests:
                state.requested = [i for r in requests for i in r["sample_indices"]]
                state.pending, state.correct, state.errors = len(state.requested), 0, 0
                return requests
        state.finished = True
        self.stopped.append((state.question.id, False, len(state.present)))
        return []
