"""The verifier deployment: ``lib.grading`` (math-verify in killable child processes) behind a handle.

``verify`` grades one response against a reference; ``grade_many`` grades several; ``group`` groups
extracted answers by equivalence (``lib.selection.group_answers``, for best-of-N). Graders never raise on
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

    async def grade_many(self, responses: list[str], reference: str) -> list[dict[str, Any]]:
        verdicts = await asyncio.to_thread(self.pool.grade_many, [(r, reference, None) for r in responses], self.budget_s)
        return [asdict(v) for v in verdicts]

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
