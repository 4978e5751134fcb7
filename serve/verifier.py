"""The verifier deployment: ``lib.grading`` (math-verify in killable child processes) behind a handle.

``verify`` grades one response against a reference; for best-of-N, ``group`` groups the samples' answers by
equivalence (``lib.selection.group_answers``) and ``judge_answers`` compares the same answers with a reference. Graders never raise on
model output.

A replica holds a :class:`lib.grading.GraderPool`: ``pool_size`` grader processes, each capped at
``memory_limit_mb`` of address space; every request takes one free grader and has ``budget_s`` in all
(waiting included), each comparison ``grading_timeout_s``. So a client sending pathological answers
occupies at most the graders its requests hold, for a bounded time, and cannot queue everyone behind it.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from ray import serve


@serve.deployment(name="verifier")
class Verifier:
    def __init__(self, grading_timeout_s: float = 5.0, pool_size: int = 4, budget_s: float = 30.0,
                 memory_limit_mb: int | None = 1024):
        from lib.grading import GraderPool
        from lib.progress import setup_logging

        setup_logging()
        self.pool = GraderPool(pool_size, timeout=grading_timeout_s, memory_limit_mb=memory_limit_mb, warm=True)
        self.budget_s = budget_s

    async def verify(self, response: str, reference: str | None) -> dict[str, Any]:
        """The grading verdict; without a reference, only the extracted answer (status ``unverified``)."""
        from lib.extraction import extract_answer

        if reference is None:
            found = extract_answer(response)
            return {"status": "unverified", "extracted": found.answer, "method": found.method, "canonical": None,
                    "error": None}
        return asdict(await asyncio.to_thread(self.pool.grade, response, reference, self.budget_s))

    async def judge_answers(self, answers: list[str | None], reference: str) -> list[bool | None]:
        """Whether each answer equals ``reference``: the answers ``group`` groups (``lib.extraction.final_answer``
        of each sample), so a sample's verdict and its group are about the same answer (grading the whole text
        would extract "2 + 2 = 4" from ``\\boxed{2 + 2 = 4}``, which groups as "4"). None for a sample that states
        no answer, and for every sample when no grader is free within the budget; a comparison past the budget
        or past its timeout is False, as in ``group``."""

        def run(same) -> list[bool | None]:
            return [None if a is None else bool(same(a, reference)) for a in answers]

        return await asyncio.to_thread(self.pool.equivalence, self.budget_s, run, lambda: [None] * len(answers))

    async def group(self, answers: list[str | None]) -> list[list[int]]:
        """Indices of equivalent answers, largest group first (ties: earliest first); None answers excluded.
        Past the budget, answers not yet compared stay in groups of their own."""
        from lib.selection import group_answers, largest_first

        def singletons() -> list[list[int]]:
            return [[i] for i, a in enumerate(answers) if a is not None]

        return await asyncio.to_thread(self.pool.equivalence, self.budget_s,
                                       lambda same: largest_first(group_answers(answers, same)), singletons)

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
