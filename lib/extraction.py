"""Final-answer extraction from a model's response text.

Order of preference (the whole text is searched, never only its tail):

1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces;
2. the last "The answer is ..." / "The final answer is ..." sentence (Xwin-Math / Vicuna style);
3. the last ``#### ...`` line (GSM8K style);
4. the last number in the text, *flagged* as a fallback (``Extracted.flagged``).

``None`` when nothing is found. Extraction never raises on model output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

METHODS = ("boxed", "answer_is", "hash", "last_number", "none")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*(.+?)(?:\.\s|\.?\s*$|\n)",
    re.IGNORECASE | re.DOTALL,
)
_HASH = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Extracted:
    """An extracted final answer and how it was found."""

    answer: str | None
    method: str

    @property
    def flagged(self) -> bool:
        """True when the answer is only the fallback "last number in the text"."""
        return self.method == "last_number"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` in ``text`` (nested braces), or None.

    Also accepts the brace-less form ``\\boxed 5``. An unbalanced last box yields None rather than
    a truncated answer.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if i < len(text) and text[i] == " ":  # "\boxed 5"
        match = re.match(r" ([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _clean(answer: str) -> str | None:
    answer = answer.strip().strip("$").strip()
    answer = re.sub(r"^\\\(|\\\)$", "", answer).strip()
    answer = answer.rstrip(".").strip()
    return answer or None


def extract_answer(text: str | None) -> Extracted:
    """Extract the final answer from a response; see the module docstring for the rules."""
    if not text:
        return Extracted(None, "none")
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return Extracted(boxed.strip(), "boxed")
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        answer = _clean(matches[-1].group(1))
        if answer:
            return Extracted(answer, "answer_is")
    hashes = _HASH.findall(text)
    if hashes:
        answer = _clean(hashes[-1])
        if answer:
            return Extracted(answer, "hash")
    numbers = _NUMBER.findall(text)
    if numbers:
        return Extracted(numbers[-1].rstrip(","), "last_number")
    return Extracted(None, "none")
