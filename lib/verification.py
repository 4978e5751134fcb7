"""Asking a model whether a solution is correct: the verify prompt and the parsing of its verdict.

Used by the synthesis stage (the teacher verifies each kept solution, the paper's filter) and by Serve's
best-of-N without a reference (the served model judges the representatives of the largest answer groups).
Plain functions of text: no model, network or Ray here.
"""

from __future__ import annotations

import re

VERIFY_PROMPT_NAME = "verify_v1"
VERIFY_PROMPT = (
    "Below are a math problem and a proposed solution. Check that the problem is well-posed and that every "
    "step of the solution and its final answer are correct. Explain briefly, then end with exactly one line: "
    "\"Verdict: correct\" or \"Verdict: incorrect\".\n\nProblem:\n{question}\n\nSolution:\n{solution}"
)


def verify_messages(question: str, solution: str) -> list[dict[str, str]]:
    """The chat messages asking for a verdict on ``solution`` to ``question``."""
    return [{"role": "user", "content": VERIFY_PROMPT.format(question=question.strip(), solution=solution.strip())}]


_VERDICT = re.compile(r"verdict\s*[:：]?\s*\**\s*(correct|incorrect)", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """The judgement of a verify response: True (correct), False (incorrect), None (no verdict line found)."""
    matches = _VERDICT.findall(text or "")
    return None if not matches else matches[-1].lower() == "correct"
