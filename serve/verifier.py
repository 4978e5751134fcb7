"""The verifier deployment: ``lib.grading`` (math-verify in a killable child process) behind a handle.

``verify`` grades one response against a reference; ``grade_many`` grades several; ``group`` groups
extracted answers by equivalence (for majority voting). Graders never raise on model output.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from ray import serve


@serve.deployment(name="verifier")
class Verifier:
    def __init__(self, grading_timeout_s: float = 5.0):
        from lib.grading import Grader
        from lib.progress import setup_logging

        setup_logging()
        self.grader = Grader(timeout=grading_timeout_s)
        self.lock = threading.Lock()  # one grader worker process per replica

    def verify(self, response: str, reference: str | None) -> dict[str, Any]:
        """The grading verdict; without a reference, only the extracted answer (status ``unverified``)."""
        from lib.extraction import extract_answer

        if reference is None:
            found = extract_answer(response)
            return {"status": "unverified", "extracted": found.answer, "method": found.method, "canonical": None,
                    "error": None}
        with self.lock:
            return asdict(self.grader.grade(response, reference))

    def grade_many(self, responses: list[str], reference: str) -> list[dict[str, Any]]:
        with self.lock:
            return [asdict(v) for v in self.grader.grade_many([(r, reference, None) for r in responses])]

    def group(self, answers: list[str | None]) -> list[list[int]]:
        """Indices of equivalent answers, largest group first (ties: earliest first); None answers excluded."""
        from lib.synthesis import vote

        with self.lock:
            return vote(answers, self.grader.is_equivalent).groups

    def __del__(self) -> None:
        grader = getattr(self, "grader", None)
        if grader is not None:
            grader.close()
