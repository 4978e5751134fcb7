"""The synthesis stage: seed rows in, one row per generated question out (a Ray Data callable class).

For each seed: ``questions_per_seed`` new questions from the teacher, ``solutions_per_question``
solutions each, answer-consistency voting (``lib.grading`` equivalence in a killable worker process),
format filters, optional teacher verification, and a MinHash signature of every kept question. Every
request outcome is recorded in the row (``usage`` per stage, ``errors``), so nothing is lost or uncounted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from lib.config import StrictModel
from lib.data import Question
from lib.grading import DEFAULT_TIMEOUT_S
from lib.progress import setup_logging
from lib.schemas import QUESTION_COLUMNS, QUESTION_ID, QUESTION_SCHEMA, SEED_COLUMNS, check_columns
from lib.extraction import final_answer
from lib.selection import vote
from lib.synthesis import (
    SOLUTION_PROMPT_NAME,
    format_problem,
    minhash_signature,
    parse_question,
    question_messages,
    question_prompt_name,
    solution_messages,
)
from lib.teacher import BUDGET_EXHAUSTED, Completion, RequestCache, TeacherClient, TeacherSettings
from lib.verification import VERIFY_PROMPT_NAME, parse_verdict, verify_messages

log = logging.getLogger("mathray.synthesis")

STAGES = ("question", "solution", "verify")


def question_table(rows: list[dict[str, Any]]):
    """Rows of the stage as a pyarrow table of ``lib.schemas.QUESTION_SCHEMA`` (so empty batches and nulls
    type-check)."""
    import pyarrow as pa

    return pa.Table.from_pylist([{c: row[c] for c in QUESTION_COLUMNS} for row in rows], schema=QUESTION_SCHEMA)


class FilterConfig(StrictModel):
    """Verification and format filters, each counted in the data card."""

    min_agreement: float = Field(0.5, gt=0, le=1, description="fraction of a question's solutions that must agree")
    verify: bool = Field(False, description="ask the teacher to judge each kept solution (the paper's step)")
    verify_max_tokens: int = Field(512, ge=1)
    question_min_chars: int = Field(20, ge=0)
    question_max_chars: int = Field(2000, ge=1)
    solution_min_chars: int = Field(20, ge=0)
    solution_max_chars: int = Field(6000, ge=1)
    require_boxed: bool = Field(True, description="keep only solutions with exactly one \\boxed{} answer")


class StageSettings(StrictModel):
    questions_per_seed: int = Field(1, ge=1)
    solutions_per_question: int = Field(4, ge=1)
    question_max_tokens: int = Field(512, ge=1)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    minhash_perm: int = Field(128, ge=16)
    shingle_words: int = Field(3, ge=1)
    grading_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    seed: int = 0


@dataclass
class Usage:
    requests: int = 0  # HTTP attempts sent
    retries: int = 0  # of those, attempts after a failed one (a dropped connection, a 429, a 5xx...)
    cached: int = 0
    failed: int = 0  # requests that failed for good (after retries)
    budget_refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    def add(self, c: Completion) -> None:
        self.requests += c.attempts
        self.retries += max(0, c.attempts - 1)
        self.cached += int(c.cached)
        self.failed += int(c.error is not None and c.error != BUDGET_EXHAUSTED)
        self.budget_refused += int(c.error == BUDGET_EXHAUSTED)
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        self.cost += c.cost


class RemoteGovernor:
    """Adapts a Ray actor handle of ``lib.teacher.Governor`` to the client's governor interface."""

    def __init__(self, handle: Any):
        self.handle = handle

    def acquire(self, tokens: int, worst_case_usd: float):
        return self.handle.acquire.remote(tokens, worst_case_usd)

    def settle(self, reserved: float, actual: float, prompt_tokens: int, completion_tokens: int):
        return self.handle.settle.remote(reserved, actual, prompt_tokens, completion_tokens)

    def release(self, reserved: float):
        return self.handle.release.remote(reserved)


class SynthesizeSeeds:
    """Ray Data stage (async): a batch of seed rows -> one row per generated question."""

    def __init__(self, teacher: dict, stage: dict, cache_path: str, governor: Any = None, api_key: Any = None):
        """``api_key``: a ``pydantic.SecretStr`` from the driver (never an env var of the actor: Ray logs those)."""
        from lib.grading import Grader

        setup_logging()
        for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.teacher = TeacherSettings.model_validate(teacher)
        self.settings = StageSettings.model_validate(stage)
        self.cache = RequestCache(cache_path)
        self.api_key = api_key
        self.governor = RemoteGovernor(governor) if governor is not None and hasattr(governor, "acquire") and hasattr(governor.acquire, "remote") else governor
        self.client: TeacherClient | None = None
        self.grader = Grader(timeout=self.settings.grading_timeout_s)
        self.grader_lock = threading.Lock()
        self.checked = False  # the input columns, on the first batch

    def _client(self) -> TeacherClient:
        if self.client is None:  # created in the event loop that runs the requests
            self.client = TeacherClient(self.teacher, governor=self.governor, cache=self.cache, seed=self.settings.seed,
                                        api_key=self.api_key)
        return self.client

    def _equivalent(self, a: str, b: str) -> bool:
        with self.grader_lock:
            return self.grader.is_equivalent(a, b)

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        if not self.checked:
            check_columns(batch, SEED_COLUMNS, "the synthesis stage's seed rows")
            self.checked = True
        seeds = [
            Question(id=str(batch["seed_id"][i]), dataset=str(batch["dataset"][i]), question=str(batch["question"][i]),
                     answer=str(batch["answer"][i]), level=batch["level"][i] or None, type=batch["type"][i] or None)
            for i in range(len(batch["seed_id"]))
        ]
        jobs = [self.one_question(seed, i) for seed in seeds for i in range(self.settings.questions_per_seed)]
        rows = await asyncio.gather(*jobs)
        return question_table(rows)

    async def one_question(self, seed: Question, index: int) -> dict[str, Any]:
        s, f = self.settings, self.settings.filters
        client = self._client()
        usage = {stage: Usage() for stage in STAGES}
        errors: list[str] = []
        prompt_name = question_prompt_name(seed)
        row: dict[str, Any] = {
            QUESTION_ID: f"{seed.id}/q{index}", "seed_id": seed.id, "seed_dataset": seed.dataset,
            "question_prompt": prompt_name, "question": None, "status": "kept", "detail": None, "label": None,
            "votes": 0, "agreement": 0.0, "solutions_json": "[]", "signature": [],
        }

        def finish(status: str | None = None, detail: str | None = None) -> dict[str, Any]:
            if status:
                row["status"], row["detail"] = status, detail
            row["usage_json"] = json.dumps({k: vars(v) for k, v in usage.items()})
            row["errors_json"] = json.dumps(errors)
            return row

        def failed(c: Completion, what: str) -> str | None:
            if c.error is None:
                return None
            errors.append(f"{what}: {c.error}")
            return "budget" if c.error == BUDGET_EXHAUSTED else "request_failed"

        qc = await client.complete(question_messages(seed, prompt_name), sample_index=index, stage="question",
                                   max_tokens=s.question_max_tokens)
        usage["question"].add(qc)
        if status := failed(qc, "question"):
            return finish(status, qc.error)
        parsed = parse_question(qc.text, f.question_min_chars, f.question_max_chars)
        if parsed.question is None:
            return finish("question_rejected", parsed.reason)
        row["question"] = parsed.question

        messages = solution_messages(parsed.question)
        sols = await asyncio.gather(*[client.complete(messages, sample_index=j, stage="solution")
                                      for j in range(s.solutions_per_question)])
        for j, c in enumerate(sols):
            usage["solution"].add(c)
            failed(c, f"solution {j}")
        if any(c.error == BUDGET_EXHAUSTED for c in sols):
            return finish("budget", "solutions incomplete")
        answers = [final_answer(c.text) if c.ok else None for c in sols]
        result = await asyncio.to_thread(vote, answers, self._equivalent, s.solutions_per_question)
        row["label"], row["votes"], row["agreement"] = result.label, result.votes, result.agreement
        solutions = [
            {"index": j, "text": c.text if c.ok else None, "answer": answers[j], "finish_reason": c.finish_reason,
             "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "cost": c.cost,
             "majority": False, "format": None, "verified": None, "keep": False}
            for j, c in enumerate(sols)
        ]
        row["solutions_json"] = json.dumps(solutions)
        if result.label is None:
            return finish("no_answer", "no solution states a final answer")
        if result.agreement < f.min_agreement:
            return finish("low_agreement", f"{result.votes}/{s.solutions_per_question} agree")

        candidates = []
        for j in result.groups[0]:
            sol = solutions[j]
            sol["majority"] = True
            sol["format"] = format_problem(sol["text"], sol["finish_reason"], f.solution_min_chars, f.solution_max_chars,
                                           f.require_boxed)
            if sol["format"] is None:
                candidates.append(sol)
        if f.verify and candidates:
            verdicts = await asyncio.gather(*[
                client.complete(verify_messages(parsed.question, sol["text"]), sample_index=sol["index"],
                                stage="verify", max_tokens=f.verify_max_tokens)
                for sol in candidates])
            for sol, c in zip(candidates, verdicts):
                usage["verify"].add(c)
                if failed(c, f"verify {sol['index']}") == "budget":
                    row["solutions_json"] = json.dumps(solutions)
                    return finish("budget", "verification incomplete")
                sol["verified"] = parse_verdict(c.text) if c.ok else None
                sol["verify_error"] = c.error
            candidates = [sol for sol in candidates if sol["verified"] is True]
        for sol in candidates:
            sol["keep"] = True
        row["solutions_json"] = json.dumps(solutions)
        if not candidates:
            return finish("no_solution_kept", "verification" if f.verify else "format")
        row["signature"] = minhash_signature(parsed.question, s.minhash_perm, s.shingle_words)
        return finish()

    def __del__(self) -> None:
        grader = getattr(self, "grader", None)
        if grader is not None:
            grader.close()
