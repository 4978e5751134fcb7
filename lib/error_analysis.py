"""Error analysis of wrong solutions: calculation errors vs reasoning errors (Xwin-Math, claim 5).

Two methods, both pure (no Ray, no network; the judge's transport lives elsewhere):

1. **Arithmetic re-check (judge-free).** :func:`find_equations` finds every explicit arithmetic
   statement ``<expression> = <number>`` (prose, LaTeX and GSM8K ``<<48/2=24>>`` annotations) and
   re-evaluates the expression with a whitelist ``ast`` evaluator (numbers, ``+ - * / **``, unary
   signs, parentheses; ``|exponent| <= MAX_EXPONENT``; never ``eval``). Notation: ``× ÷ ⋅ · \\times
   \\cdot \\div \\frac{a}{b}``, ``^``, ``a x b`` between numbers, ``$`` and thousands commas are
   normalized. Skipped: statements with ``%``, a side that is not pure arithmetic (``x = 5``,
   ``2x + 3 = 7``, dates), division by zero. A chain ``a + b = c + d = e`` is split at ``=``; each
   plain-number segment is checked against the nearest preceding segment that has an operator.
   :func:`arithmetic_label` says ``"calculation"`` when some statement is wrong, else
   ``"no_slip_found"`` (the error is in the reasoning, or the arithmetic is not written out).
2. **LLM judge.** :data:`JUDGE_PROMPT` asks any OpenAI-compatible model to classify the first error
   of an incorrect solution; :func:`parse_judge_label` reads its ``Label:`` line.

Tolerance (:data:`TOLERANCE_RULE`): a claim written with ``d >= 1`` decimals is accepted when it is
the exact value rounded to ``d`` decimals (exact halves either way): ``10/3 = 3.33`` and ``10/3 =
3.3`` pass, ``2/3 = 0.66`` fails. Every claim is also accepted within ``RELATIVE_TOLERANCE`` (1e-6
times ``max(1, |value|)``); an integer claim gets no rounding, so ``10/3 = 3`` fails.

:func:`summarize` counts the labels and divides by all samples of a checkpoint (not only the wrong
ones), so rates are comparable across checkpoints.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

RELATIVE_TOLERANCE = 1e-6
MAX_EXPONENT = 100
MAX_EXPRESSION_CHARS = 200
TOLERANCE_RULE = (
    "claim == value rounded to the claim's decimals (>= 1 decimal; halves either way), "
    f"or |value - claim| <= {RELATIVE_TOLERANCE:g} * max(1, |value|)"
)
ARITHMETIC_METHOD = (
    "arithmetic re-check (judge-free): explicit `expr = number` statements re-evaluated; "
    f"a wrong one labels the solution a calculation error ({TOLERANCE_RULE})"
)
JUDGE_METHOD = (
    "LLM judge: the first error of a wrong solution classified as a calculation error "
    "(right set-up, wrong computation) or a reasoning error; label from the last `Label:` line"
)
LABELS = ("calculation", "reasoning", "no_slip_found", "unlabelled")

JUDGE_PROMPT = """You are grading a solution to a math problem. The solution's final answer is wrong.

Problem:
{question}

Correct final answer: {gold}

Solution:
{solution}

Find the FIRST error in the solution and classify it:
- calculation: the reasoning and set-up are right up to that point, but an arithmetic or algebraic
  computation gives a wrong result (e.g. 16 * 64 = 1120).
- reasoning: a wrong approach, a misread question, a wrongly set-up equation, or a missing step.

Explain briefly, then end with exactly one line, either `Label: calculation` or `Label: reasoning`."""


@dataclass(frozen=True)
class Equation:
    """One checked statement. ``text``: the part of the chain from the evaluated side to the claim, after
    notation normalization (``16 * 64 = 1120``); ``expression``: the side evaluated to ``value``;
    ``claimed``: the plain number written after ``=``; ``ok``: the claim passes :data:`TOLERANCE_RULE`."""

    text: str
    expression: str
    claimed: float
    value: float
    ok: bool


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent {exponent:g} exceeds {MAX_EXPONENT}")
    return base**exponent


_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: _power,
}
_ANNOTATION = re.compile(r"<<(.*?)>>", re.S)
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_SUBSTITUTIONS = [
    (re.compile(r"\\times(?![a-zA-Z])|\\cdot(?![a-zA-Z])|[×⋅·]"), " * "),
    (re.compile(r"\\div(?![a-zA-Z])|÷"), " / "),
    (re.compile(r"\\(?:left|right|boxed)(?![a-zA-Z])|\\[,;!()\[\]]|\$"), " "),
    (re.compile(r"−"), "-"),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),
    (re.compile(r"(?<=[\d)])\s*x\s*(?=[\d(])"), " * "),
    (re.compile(r"\^"), "**"),
]
_RUN = re.compile(r"(?:\d+(?:\.\d+)?|\*\*|[-+*/()=%]|[ \t])+")
_BOLD_EDGES = re.compile(r"[ \t]*(?:\*\*)?[ \t]*(.*?)[ \t]*(?:\*\*)?[ \t]*")


def _normalize(text: str) -> str:
    text = text.replace("\\$", "$").replace("{,}", ",")
    while (replaced := _FRAC.sub(r"(\1)/(\2)", text)) != text:
        text = replaced
    for pattern, replacement in _SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    return text.replace("{", "(").replace("}", ")")


def _eval_node(node: ast.AST) -> tuple[float, bool]:
    """(value, has a binary operator); raises ValueError/ArithmeticError for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value), False
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value, has_op = _eval_node(node.operand)
        return (-value if isinstance(node.op, ast.USub) else value), has_op
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        result = _BINARY[type(node.op)](_eval_node(node.left)[0], _eval_node(node.right)[0])
        if not isinstance(result, float) or not math.isfinite(result):  # (-8) ** (1/3) is complex
            raise ValueError("not a finite real number")
        return result, True
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


def _evaluate(expression: str) -> tuple[float, bool] | None:
    if not expression or "%" in expression or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        return _eval_node(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ArithmeticError, RecursionError):
        return None


def _balance(segment: str) -> str:
    """Drop the unmatched outer parentheses that prose leaves on a chain's ends: ``(so 3 + 4 = 7)``."""
    segment = " ".join(segment.split())
    while segment.endswith(")") and segment.count(")") > segment.count("("):
        segment = segment[:-1].rstrip()
    while segment.startswith("(") and segment.count("(") > segment.count(")"):
        segment = segment[1:].lstrip()
    return segment


def claim_ok(value: float, claimed: float, decimals: int) -> bool:
    """The tolerance rule (:data:`TOLERANCE_RULE`) for a claim written with ``decimals`` decimals."""
    slack = RELATIVE_TOLERANCE * max(1.0, abs(value))
    rounding = 0.5 * 10.0**-decimals if decimals > 0 else 0.0
    return abs(value - claimed) <= rounding + slack


def _chain_equations(text: str, start: int, statement: str) -> list[Equation]:
    prefix = text[:start]
    before = prefix.rstrip("*")[-1:]  # a variable, call or clock glued to the left side: 2x, x^2, f(2), 10:30
    glued = before.isalnum() or before in ("_", ")", ":")
    after_word = prefix.rstrip()[-1:].isalnum()
    tainted = glued or (statement[0] not in "0123456789(" and after_word)
    equations: list[Equation] = []
    segments = [_balance(raw) for raw in statement.split("=")]
    reference: tuple[int, float] | None = None  # (segment index, value) of the nearest expression
    for i, segment in enumerate(segments):
        parsed = None if i == 0 and tainted else _evaluate(segment)
        if parsed is None:
            reference = None
        elif parsed[1]:
            reference = (i, parsed[0])
        elif reference is not None:
            j, value = reference
            decimals = len(m.group(1)) if (m := re.search(r"\.(\d+)", segment)) else 0
            shown = " = ".join(segments[j : i + 1])
            equations.append(Equation(shown, segments[j], parsed[0], value, claim_ok(value, parsed[0], decimals)))
    return equations


def _chunk_equations(chunk: str) -> list[Equation]:
    text = _normalize(chunk)
    equations: list[Equation] = []
    for match in _RUN.finditer(text):
        if "=" in match.group():
            core = _BOLD_EDGES.fullmatch(match.group())  # drop spaces and markdown ** at the ends
            equations.extend(_chain_equations(text, match.start() + core.start(1), core.group(1)))
    return equations


def find_equations(text: str) -> list[Equation]:
    """Every explicit ``<expression> = <number>`` statement in ``text``, in order, re-evaluated."""
    # re.split alternates prose and annotation bodies; an annotation also breaks the prose around it,
    # so "16 - 3 - 4 = <<16-3-4=9>>9" is checked once.
    return [eq for chunk in _ANNOTATION.split(text) for eq in _chunk_equations(chunk)]


def arithmetic_label(text: str) -> str:
    """``"calculation"`` when some written equation is wrong, else ``"no_slip_found"``."""
    return "calculation" if any(not eq.ok for eq in find_equations(text)) else "no_slip_found"


def judge_messages(question: str, gold: str, solution: str) -> list[dict[str, str]]:
    """The judge request as chat messages (one user message)."""
    return [{"role": "user", "content": JUDGE_PROMPT.format(question=question, gold=gold, solution=solution)}]


_LABEL_LINE = re.compile(r"^[\s*_#>`-]*label[\s*_`]*:(.*)$", re.I | re.M)


def parse_judge_label(text: str) -> str | None:
    """The label on the judge's last ``Label:`` line; None when absent, unknown or ambiguous."""
    lines = _LABEL_LINE.findall(text)
    if not lines:
        return None
    found = set(re.findall(r"\b(calculation|reasoning)\b", lines[-1].lower()))
    return found.pop() if len(found) == 1 else None


def summarize(labels: Sequence[str | None], num_samples: int) -> dict:
    """Counts per label (None -> ``"unlabelled"``) and rates over ALL ``num_samples`` of a checkpoint."""
    if num_samples < len(labels):
        raise ValueError(f"num_samples={num_samples} is smaller than the {len(labels)} labels")
    counts = dict.fromkeys(LABELS, 0)
    for label in labels:
        key = "unlabelled" if label is None else label
        if key not in counts:
            raise ValueError(f"unknown label {label!r}; expected one of {LABELS[:-1]} or None")
        counts[key] += 1
    rates = {f"{k}_rate": (v / num_samples if num_samples else 0.0) for k, v in counts.items()}
    return {"num_samples": num_samples, "num_labelled": len(labels) - counts["unlabelled"],
            "counts": counts, "rates": rates}
