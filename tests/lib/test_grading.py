"""Tests for lib.grading: answer equivalence, full-response grading, timeouts, cache, threads.

One worker process is shared by the table tests (module fixture); the timeout tests own small
Graders with a 2 s timeout so that a killed worker does not disturb the others.
"""

from __future__ import annotations

import threading
import time

import pytest

from lib import grading
from lib.grading import (
    DEFAULT_TIMEOUT_S,
    GRADER_VERSION,
    MATH_VERIFY_VERSION,
    STATUSES,
    Grader,
    Verdict,
    normalize_answer,
    settings,
)

pytestmark = pytest.mark.timeout(60)

SHORT_TIMEOUT_S = 2.0
# Worker restart (spawn + import math_verify) plus scheduling slack on a loaded 2-core machine.
SLACK_S = 5.0
POWER_TOWER = "9^{9^{9^{9}}}"  # sympy tries to evaluate it: never finishes
NESTED_BRACES = "{" * 50 + "1" + "}" * 50  # math-verify's LaTeX parse is exponential in the depth


@pytest.fixture(scope="module")
def grader():
    with Grader() as g:
        yield g


# (prediction, gold, expected): already-extracted answers.
EQUIVALENCE_CASES = [
    # GSM8K forms
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("1,234,567", "1234567", True),
    ("$5", "5", True),
    ("\\$5", "5", True),
    ("5.00", "5", True),
    ("5 apples", "5", True),
    ("12 dollars", "12", True),
    ("-3", "-3", True),
    ("\u22123", "-3", True),
    ("**42**", "42", True),
    ("72", "#### 72", True),
    ("1\\,000", "1000", True),
    ("3", "-3", False),
    ("1,000", "100", False),
    ("$5", "6", False),
    ("5.01", "5", False),
    ("5 apples", "6", False),
    ("3 and 4", "3", False),
    ("1,001", "1000", False),
    ("$50", "5", False),
    ("5.5", "5", False),
    # leading zeros (AIME style)
    ("016", "16", True),
    ("16", "016", True),
    ("160", "16", False),
    ("61", "16", False),
    # fractions and decimals
    ("0.5", "\\frac12", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac12", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
    ("1\\frac{1}{2}", "\\frac{3}{2}", True),
    ("0.333333", "\\frac{1}{3}", True),
    ("0.25", "\\frac{1}{2}", False),
    ("0.33", "\\frac{1}{3}", False),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{1}{2}", "-\\frac{1}{2}", False),
    ("\\frac{3}{2}", "\\frac{2}{3}", False),
    ("\\frac{1}{2}", "\\frac{1}{4}", False),
    ("2", "\\frac12", False),
    ("-0.5", "0.5", False),
    # numeric tolerance: absolute 1e-6, no loose relative tolerance
    ("1.0000001", "1", True),
    ("1.00001", "1", False),
    ("1234567.4", "1234567", False),
    # radicals
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\sqrt{12}", "2\\sqrt{3}", True),
    ("1.414214", "\\sqrt{2}", True),
    ("\\sqrt{169}", "13", False),
    ("\\sqrt{4}", "2", False),
    ("\\sqrt{3}", "3", False),
    ("\\sqrt{2}", "1.41", False),
    ("3\\sqrt{2}", "2\\sqrt{3}", False),
    ("\\sqrt{9}x", "3x", False),
    ("\\sqrt{8}", "2\\sqrt{3}", False),
    # pi
    ("2\\pi", "2\\pi", True),
    ("6.283185", "2\\pi", True),
    ("pi/2", "\\frac{\\pi}{2}", True),
    ("2\\pi", "6.28", False),
    ("6.28", "2\\pi", False),
    ("\\pi", "3.14", False),
    ("\\pi^2", "2\\pi", False),
    # intervals
    ("[1,2]", "[1,2]", True),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(1,2]", "(1,2)", False),
    ("[1,2)", "[1,2]", False),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    ("[1,2]", "(1,2)", False),
    # sets and lists of solutions
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("1, 2", "2, 1", True),
    ("\\{1,2\\}", "\\{1,3\\}", False),
    ("1, 2, 3", "1, 2", False),
    ("\\{1\\}", "\\{1,2\\}", False),
    # ordered tuples
    ("(2,1)", "(2,1)", True),
    ("(1,2,3)", "(1,2,3)", True),
    ("(1,2)", "(2,1)", False),
    ("(1,2,3)", "(1,3,2)", False),
    ("(1,2)", "(1,2,3)", False),
    # degrees
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("30°", "30", True),
    ("60^\\circ", "30", False),
    # percent: the sign is dropped on both sides
    ("5\\%", "5", True),
    ("5%", "5", True),
    ("5", "5\\%", True),
    ("5\\%", "0.05", False),
    ("50\\%", "5", False),
    # text and multiple-choice answers
    ("\\text{(C)}", "C", True),
    ("(C)", "\\text{(C)}", True),
    ("C", "\\text{(C)}", True),
    ("Evelyn", "\\text{Evelyn}", True),
    ("\\text{evelyn}", "Evelyn", True),
    ("\\text{no solution}", "No solution", True),
    ("B", "\\text{(C)}", False),
    ("Evenly", "Evelyn", False),
    ("Emily", "\\text{Evelyn}", False),
    ("5", "\\text{Evelyn}", False),
    ("A", "\\text{(C)}", False),
    ("\\text{Bob}", "\\text{Evelyn}", False),
    # units
    ("5\\text{ cm}", "5", True),
    ("5 \\text{cm}^2", "5", True),
    ("60 km/h", "60", True),
    ("5\\text{ cm}", "6", False),
    # equations
    ("x=5", "5", True),
    ("x = 5", "5", True),
    ("5", "x=5", True),
    ("y=2x+3", "2x+3", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x=6", "5", False),
    ("x^2+1", "(x+1)^2", False),
    ("x=5", "x=-5", False),
    ("y=2x+3", "2x-3", False),
    # scientific notation
    ("1.5\\times10^{3}", "1500", True),
    ("1.5 \\times 10^3", "1500", True),
    ("1.5e3", "1500", True),
    ("2.5e-3", "0.0025", True),
    ("10^{-3}", "0.001", True),
    ("1.5\\times10^{4}", "1500", False),
    ("1.5e3", "150", False),
    ("10^{3}", "100", False),
    # negatives, infinity, complex numbers
    ("- 5", "-5", True),
    ("\\infty", "\\infty", True),
    ("3+2i", "2i+3", True),
    ("-5", "5", False),
    ("-\\infty", "\\infty", False),
    ("3-2i", "3+2i", False),
    ("3+2i", "3", False),
    ("\\infty", "1000000", False),
    # matrices
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    # a boxed prediction is unwrapped
    ("\\boxed{5}", "5", True),
    # junk predictions and junk golds: never correct
    ("", "5", False),
    ("abc", "5", False),
    ("\\frac{", "5", False),
    ("}}}{{", "5", False),
    ("5", "", False),
    ("5", "\\frac{", False),
    ("\\frac{", "\\frac{", False),
    ("}}}{{", "}}}{{", False),
]


def test_equivalence_table_is_large_and_balanced():
    """The table keeps at least 90 cases with about as many incorrect as correct ones."""
    num_false = sum(not expected for _, _, expected in EQUIVALENCE_CASES)
    assert len(EQUIVALENCE_CASES) >= 90
    assert num_false >= 0.45 * len(EQUIVALENCE_CASES)


@pytest.mark.parametrize(("pred", "gold", "expected"), EQUIVALENCE_CASES)
def test_is_equivalent(grader, pred, gold, expected):
    """Known true and false verdicts of the answer comparison (see the module docstring's policy)."""
    assert grader.is_equivalent(pred, gold) is expected


def test_verify_receives_gold_first(grader):
    """math-verify is asymmetric: a relation gold accepts an interval prediction, not the reverse.

    Swapped (gold, prediction) arguments would flip both results.
    """
    assert grader.is_equivalent("(1,2)", "1<x<2") is True
    assert grader.is_equivalent("1<x<2", "(1,2)") is False


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("1,000", "1000"),
        ("(1,2)", "(1,2)"),
        ("$5", "5"),
        ("\\$5.50", "5.50"),
        ("5 apples", "5"),
        ("5\\%", "5"),
        ("30^\\circ", "30"),
        ("\\text{(C)}", "C"),
        ("\\text{Evelyn}", "Evelyn"),
        ("5\\text{ cm}", "5"),
        ("1.5e3", "1.5\\times 10^{3}"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\left(1,2\\right)", "(1,2)"),
        ("\\boxed{7}", "7"),
        ("#### 72", "72"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalize_answer(answer, normalized):
    """Pre-normalization keeps tuples intact and strips GSM8K decorations before math-verify."""
    assert normalize_answer(answer) == normalized


# ---------------------------------------------------------------- grade() on full responses


def test_grade_boxed(grader):
    """A boxed answer is extracted (method "boxed") and compared by value."""
    verdict = grader.grade("We get $x = \\frac{1}{2}$, so the result is \\boxed{\\frac{1}{2}}.", "0.5")
    assert verdict == Verdict("correct", "\\frac{1}{2}", "boxed", "1/2", None)


def test_grade_answer_is(grader):
    """"The answer is ..." sentences are extracted (method "answer_is")."""
    verdict = grader.grade("She pays 3 * 6 = 18 dollars. The answer is 18.", "18")
    assert (verdict.status, verdict.extracted, verdict.method) == ("correct", "18", "answer_is")


def test_grade_hash(grader):
    """GSM8K "#### N" lines are extracted (method "hash") and thousands commas are normalized."""
    verdict = grader.grade("500 + 500 = 1000\n#### 1,000", "1000")
    assert (verdict.status, verdict.extracted, verdict.method, verdict.canonical) == ("correct", "1,000", "hash", "1000")


def test_grade_last_number_fallback(grader):
    """Without any answer marker the last number is used and the method says so."""
    verdict = grader.grade("First 4 apples, then 14 more, so 18 in total", "18")
    assert (verdict.status, verdict.extracted, verdict.method) == ("correct", "18", "last_number")


def test_grade_wrong_answer_is_incorrect(grader):
    """A wrong extracted answer is "incorrect", not "error" or "no_answer"."""
    verdict = grader.grade("The answer is 17.", "18")
    assert (verdict.status, verdict.extracted, verdict.error) == ("incorrect", "17", None)


def test_grade_no_answer(grader):
    """A response without any answer is "no_answer", never folded into "incorrect"."""
    assert grader.grade("I am not sure how to solve this.", "18") == Verdict("no_answer", None, "none", None, None)
    assert grader.grade("", "18").status == "no_answer"


@pytest.mark.parametrize("gold", ["", "   ", None])
def test_grade_without_gold_is_ungraded_never_correct_nor_error(grader, gold):
    """No gold answer (a set like hungarian_exam): an extracted answer is "ungraded" (stored with its canonical
    form for grouping), no answer is "no_answer"; never "correct", never "error" (which would fail the run)."""
    assert grader.grade("\\boxed{5}", gold) == Verdict("ungraded", "5", "boxed", "5", None)
    assert grader.grade("I cannot tell.", gold).status == "no_answer"


def test_grade_unparseable_gold_is_error(grader):
    """A gold answer math-verify cannot parse is an "error" even when the prediction is identical."""
    verdict = grader.grade("The answer is \\frac{", "\\frac{")
    assert verdict.status == "error"
    assert verdict.error == "gold answer could not be parsed"


def test_grade_searches_the_whole_text(grader):
    """An answer far from the end of a long response is still found (no last-300-characters window)."""
    response = "The answer is \\boxed{42}. " + "Let me double check this reasoning once more. " * 2000
    verdict = grader.grade(response, "42")
    assert (verdict.status, verdict.method) == ("correct", "boxed")


def test_canonical_groups_equal_answers(grader):
    """Majority voting groups "0.5", "\\frac12" and "1/2" (and "x=5" with "5") under one canonical string."""
    halves = {grader.grade(r, "0.5").canonical for r in ("\\boxed{0.5}", "\\boxed{\\dfrac12}", "The answer is 1/2.")}
    fives = {grader.grade(r, "5").canonical for r in ("\\boxed{x=5}", "\\boxed{5}", "\\boxed{5.00}", "#### $5")}
    assert halves == {"1/2"}
    assert fives == {"5"}
    assert grader.grade("\\boxed{Evelyn}", "Evelyn").canonical == grader.grade("\\boxed{\\text{evelyn}}", "x").canonical


def test_grade_many_keeps_order(grader):
    """grade_many returns one verdict per item, in order."""
    verdicts = grader.grade_many([("\\boxed{1}", "1", "q1"), ("\\boxed{2}", "1", "q1"), ("nothing", "1", "q1")])
    assert [v.status for v in verdicts] == ["correct", "incorrect", "no_answer"]
    assert all(v.status in STATUSES for v in verdicts)


def test_settings_record_grader_version_and_tolerance():
    """Every output records the grader version, math-verify version, tolerance and timeout."""
    recorded = settings(timeout=3.0)
    assert recorded["grader_version"] == GRADER_VERSION
    assert MATH_VERIFY_VERSION in GRADER_VERSION and MATH_VERIFY_VERSION != "unknown"
    assert (recorded["float_rounding"], recorded["absolute_tolerance"], recorded["relative_tolerance"]) == (6, 1e-6, 1e-12)
    assert recorded["timeout_s"] == 3.0
    assert settings()["timeout_s"] == DEFAULT_TIMEOUT_S
    assert "gold" in recorded["comparison"]


def test_module_level_functions_use_a_default_grader():
    """grade() and is_equivalent() work without constructing a Grader."""
    assert grading.is_equivalent("\\frac{1}{2}", "0.5") is True
    assert grading.grade("The answer is 7.", "7").status == "correct"


# ---------------------------------------------------------------- timeouts, pathological inputs


def test_power_tower_times_out_and_worker_restarts():
    """A comparison that never finishes is killed after the timeout; the next comparison still works."""
    with Grader(timeout=SHORT_TIMEOUT_S) as g:
        assert g.grade("\\boxed{1}", "1").status == "correct"  # worker started outside the timed part
        start = time.monotonic()
        verdict = g.grade(f"\\boxed{{{POWER_TOWER}}}", "1")
        assert time.monotonic() - start < SHORT_TIMEOUT_S + SLACK_S
        assert (verdict.status, verdict.extracted, verdict.error) == ("timeout", POWER_TOWER, "comparison exceeded 2s")
        assert g.grade("\\boxed{13}", "13").status == "correct"
        assert (g.stats["timeouts"], g.stats["restarts"]) == (1, 1)
        # The same answer to the same question again is a cache hit: no second 2 s wait or restart.
        start = time.monotonic()
        assert g.grade(f"The answer is ${POWER_TOWER}$.", "1").status == "timeout"
        assert time.monotonic() - start < 0.5
        assert (g.stats["timeouts"], g.stats["restarts"]) == (1, 1)


def test_deeply_nested_braces_time_out():
    """Deeply nested braces (exponential in math-verify's parser) end as "timeout", then recover."""
    with Grader(timeout=SHORT_TIMEOUT_S) as g:
        start = time.monotonic()
        assert g.is_equivalent(NESTED_BRACES, "1") is False
        assert time.monotonic() - start < SHORT_TIMEOUT_S + SLACK_S + 5.0  # includes the worker start
        assert g.stats["timeouts"] == 1
        assert g.is_equivalent("\\frac{1}{2}", "0.5") is True
        assert g.stats["restarts"] == 1


def test_megabyte_inputs_return_quickly(grader):
    """1 MB responses and answers never reach math-verify and never hang extraction."""
    start = time.monotonic()
    huge_number = grader.grade("1" * 1_000_000, "1")
    huge_box = grader.grade("\\boxed{" + "x+" * 500_000 + "1}", "1")
    spaces = grader.grade("The answer is 7" + " " * 1_000_000 + ".", "7")
    nested = grader.grade("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1")
    assert time.monotonic() - start < 5.0
    assert (huge_number.status, huge_number.method) == ("incorrect", "last_number")
    assert huge_box.status == "incorrect"
    assert (spaces.status, spaces.extracted) == ("correct", "7")
    assert nested.status == "incorrect"
    assert grader.grade("\\boxed{2}", "2").status == "correct"


def test_worker_crash_is_an_error_and_grader_recovers():
    """A worker that dies mid-comparison gives status "error" with a message, and is restarted."""
    with Grader(timeout=30.0) as g:
        assert g.grade("\\boxed{1}", "1").status == "correct"
        result: dict[str, Verdict] = {}
        thread = threading.Thread(target=lambda: result.setdefault("v", g.grade(f"\\boxed{{{POWER_TOWER}}}", "1")))
        thread.start()
        time.sleep(1.0)
        g._process.kill()  # simulate a segfault in sympy
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert result["v"].status == "error"
        assert result["v"].error.startswith("grader worker died")
        assert g.grade("\\boxed{2}", "2").status == "correct"
        assert (g.stats["errors"], g.stats["restarts"], g.stats["timeouts"]) == (1, 1, 0)


def test_grader_works_from_a_non_main_thread():
    """Created and used from a plain thread (as in a Ray actor), the Grader grades and enforces its timeout."""
    result: dict[str, object] = {}

    def run() -> None:
        with Grader(timeout=SHORT_TIMEOUT_S) as g:
            result["correct"] = g.grade("The answer is \\boxed{\\frac{\\sqrt2}{2}}.", "\\frac{1}{\\sqrt2}").status
            start = time.monotonic()
            result["timeout"] = g.grade(f"\\boxed{{{POWER_TOWER}}}", "2").status
            result["elapsed"] = time.monotonic() - start
            result["after"] = g.grade("\\boxed{3}", "3").status

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=45)
    assert not thread.is_alive()
    assert (result["correct"], result["timeout"], result["after"]) == ("correct", "timeout", "correct")
    assert result["elapsed"] < SHORT_TIMEOUT_S + SLACK_S


# ---------------------------------------------------------------- cache


def test_cache_compares_each_distinct_answer_once():
    """100 responses with 3 distinct answers to one question cost exactly 3 comparisons."""
    forms = ["\\boxed{{{}}}", "The answer is {}.", "#### {}", "so we get $\\boxed{{{}}}$"]
    responses = [forms[i % len(forms)].format(5 + i % 3) for i in range(100)]
    with Grader() as g:
        verdicts = g.grade_many([(r, "5", "question-1") for r in responses])
        assert (g.stats["comparisons"], g.stats["cache_hits"]) == (3, 97)
        assert sum(v.status == "correct" for v in verdicts) == 34
        # The cache key separates questions: the same answers to another question are compared again.
        g.grade_many([(r, "6", "question-2") for r in responses[:3]])
        assert g.stats["comparisons"] == 6


def test_cache_is_bounded():
    """The cache never holds more than cache_size entries (least recently used are dropped)."""
    with Grader(cache_size=2) as g:
        for answer in ("1", "2", "3"):
            g.is_equivalent(answer, "1")
        assert g.stats["comparisons"] == 3
        assert g.is_equivalent("1", "1") is True
        assert g.stats["comparisons"] == 4


def test_close_then_reuse():
    """After close() the Grader starts a new worker on demand."""
    g = Grader()
    assert g.is_equivalent("2", "2")
    g.close()
    assert g.is_equivalent("3", "3")
    g.close()
    assert g.stats["restarts"] == 1


def test_bad_timeout_is_rejected():
    """A non-positive timeout is a configuration error."""
    with pytest.raises(ValueError, match="timeout"):
        Grader(timeout=0)
