"""Final-answer extraction from a model's response text.

Order of preference (the whole text is searched, never only its tail):

1. the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces;
2. the last "The answer is ..." / "The final answer is ..." sentence (Xwin-Math / Vicuna style);
3. the last ``#### ...`` line (GSM8K style);
4. the last number in the text, *flagged* as a fallback (``Extracted.flagged``).

``None`` when nothing is found. Extraction never raises on model output, and runs in the caller's
process where no timeout can stop it, so every pattern here is linear-time (1 MB in milliseconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

METHODS = ("boxed", "answer_is", "hash", "last_number", "none")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Only the anchor is a regex; the answer after the last anchor is cut with plain string search, so a
# long whitespace run cannot make the match quadratic (the old lazy ``(.+?)(?:\.\s|\.?\s*$|\n)``
# pattern took minutes on 1 MB of spaces, in the caller's process, where no timeout can stop it).
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\b\s*[:：]?\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_HASH = re.compile(r"####\s*([^\n]+)")
# A thousands separator is only a comma followed by exactly three digits: "1,000" is one number,
# "1,2,3" is three.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


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
    answer = answer.strip().strip("*").strip().strip("$").strip()  # "**42**" (markdown bold), "$42$"
    answer = re.sub(r"^\\\(|\\\)$", "", answer).strip()
    answer = answer.rstrip(".").strip()
    if any(cmd in answer for cmd in _BOX_COMMANDS):  # "The answer is within \boxed{}": an empty box, no answer
        return None
    return answer or None


def extract_answer(text: str | None) -> Extracted:
    """Extract the final answer from a response; see the module docstring for the rules."""
    if not text:
        return Extracted(None, "none")
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return Extracted(boxed.strip(), "boxed")
    anchor = None
    for anchor in _ANSWER_IS.finditer(text):
        pass
    if anchor is not None:
        newline = text.find("\n", anchor.end())
        line = text[anchor.end() : newline if newline >= 0 else len(text)]
        end = _SENTENCE_END.search(line)
        answer = _clean(line[: end.start()] if end else line)
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


def final_answer(solution: str) -> str | None:
    """The final answer a solution states, for synthesis voting and Serve's best-of-N: its last ``\\boxed{}``,
    else an explicit "The answer is ..." or "#### ..." (never the last-number fallback); of "x = 5", the
    right-hand side. None when it states none."""
    found = extract_answer(solution or "")
    if found.method not in ("boxed", "answer_is", "hash"):
        return None
    answer = found.answer.rsplit("=", 1)[-1].strip() if "=" in found.answer else found.answer
    return answer or None
