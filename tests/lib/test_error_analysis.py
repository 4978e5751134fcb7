"""Error analysis: exact equations found and re-checked, exact labels, judge-label parsing, summaries."""

from __future__ import annotations

from dataclasses import astuple

import pytest

from lib.error_analysis import (
    ARITHMETIC_METHOD,
    JUDGE_METHOD,
    JUDGE_PROMPT,
    Equation,
    arithmetic_label,
    claim_ok,
    find_equations,
    judge_messages,
    parse_judge_label,
    summarize,
)


FIND_CASES = {
    "wrong products and quotients are flagged": (
        "So, Janace’s ducks lay 16 * 64 = 1120 eggs per day. Then 1120 / 16 = 7.41 per duck.",
        [("16 * 64 = 1120", "16 * 64", 1120.0, 1024.0, False), ("1120 / 16 = 7.41", "1120 / 16", 7.41, 70.0, False)]),
    "correct GSM8K prose with a dollar claim passes": (
        "She has 16 - 3 - 4 = 9 eggs left. 9 * 2 = $18.",
        [("16 - 3 - 4 = 9", "16 - 3 - 4", 9.0, 9.0, True), ("9 * 2 = 18", "9 * 2", 18.0, 18.0, True)]),
    "a calculator annotation alone": ("<<16-3-4=9>>", [("16-3-4 = 9", "16-3-4", 9.0, 9.0, True)]),
    "an annotation is checked once even when the prose repeats it": (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs and makes 9 * 2 = $<<9*2=19>>19.",
        [("16-3-4 = 9", "16-3-4", 9.0, 9.0, True), ("9*2 = 19", "9*2", 19.0, 18.0, False)]),
    "thousands commas and dollar signs are normalized": (
        "It costs $1,200 + $300 = $1,500, and 3 + 4 = 7, so 7 * 2 = 15.",
        [("1200 + 300 = 1500", "1200 + 300", 1500.0, 1500.0, True), ("3 + 4 = 7", "3 + 4", 7.0, 7.0, True),
         ("7 * 2 = 15", "7 * 2", 15.0, 14.0, False)]),
    "LaTeX times, cdot, div, frac and unicode operators": (
        r"$16 \times 64 = 1024$, \(\frac{10}{4} = 2.5\), $\dfrac{\frac{1}{2}}{4} = 0.125$, "
        r"$9 \cdot 2 = \boxed{18}$, $12 \div 5 = 2.4$, 6 × 7 = 42, 8 ÷ 2 = 4, 2 x $1,250 = $2,600.",
        [("16 * 64 = 1024", "16 * 64", 1024.0, 1024.0, True), ("(10)/(4) = 2.5", "(10)/(4)", 2.5, 2.5, True),
         ("((1)/(2))/(4) = 0.125", "((1)/(2))/(4)", 0.125, 0.125, True), ("9 * 2 = (18)", "9 * 2", 18.0, 18.0, True),
         ("12 / 5 = 2.4", "12 / 5", 2.4, 2.4, True), ("6 * 7 = 42", "6 * 7", 42.0, 42.0, True),
         ("8 / 2 = 4", "8 / 2", 4.0, 4.0, True), ("2 * 1250 = 2600", "2 * 1250", 2600.0, 2500.0, False)]),
    "powers, negative results and markdown bold": (
        "2^10 = 1024, 3**2 = 9, 5 - 8 = -3, **Total: 5 + 3 = 8**.",
        [("2**10 = 1024", "2**10", 1024.0, 1024.0, True), ("3**2 = 9", "3**2", 9.0, 9.0, True),
         ("5 - 8 = -3", "5 - 8", -3.0, -3.0, True), ("5 + 3 = 8", "5 + 3", 8.0, 8.0, True)]),
    "a chain checks each number against the nearest expression": (
        "3 + 4 = 7 = 8", [("3 + 4 = 7", "3 + 4", 7.0, 7.0, True), ("3 + 4 = 7 = 8", "3 + 4", 8.0, 7.0, False)]),
    "a chain after a first expression": ("2 * 3 + 1 = 6 + 1 = 8", [("6 + 1 = 8", "6 + 1", 8.0, 7.0, False)]),
    "a chain after a variable": ("x = 2 + 3 = 5", [("2 + 3 = 5", "2 + 3", 5.0, 5.0, True)]),
    "division by zero is skipped": ("5 / 0 = 3", []),
    "division by zero resets the chain": ("5 / (3 - 3) = 7 = 2 + 2 = 4", [("2 + 2 = 4", "2 + 2", 4.0, 4.0, True)]),
}


@pytest.mark.parametrize("text, expected", FIND_CASES.values(), ids=FIND_CASES.keys())
def test_find_equations_exact(text: str, expected: list[tuple]):
    assert [astuple(e) for e in find_equations(text)] == expected
    assert all(isinstance(e, Equation) for e in find_equations(text))
    assert arithmetic_label(text) == ("calculation" if any(not ok for *_, ok in expected) else "no_slip_found")


@pytest.mark.parametrize(
    "text",
    [
        "x = 5",
        "Let x = 5 and y = 12.",
        "2x + 3 = 7",
        "x - 3 + 4 = 7",
        "x^2 + 1 = 5",
        "f(2) = 3",
        "The rate is $5/hour * 3 + 2 = 5 dollars",
        "1 + 2 + \\cdots + 10 = 56",
        "On 2023-10-05 it rained.",
        "From 10:30 + 2 = 12:30 hours",
        "5² + 3 = 30",
        "50 * 20% = 12",
        "1/2 = 50%",
        "10/3 ≈ 3",
        "2 ** 1000 = 5",
        "(-8)**(1/3) = -2",
        "3 + 4 == 8",
        "Step 1 = 3",
    ],
)
def test_non_arithmetic_or_unsafe_statements_are_ignored(text: str):
    assert find_equations(text) == []
    assert arithmetic_label(text) == "no_slip_found"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("10/3 = 3.33", True),
        ("10/3 = 3.3", True),
        ("10/3 = 3.333333", True),
        ("10/3 = 3", False),
        ("10/3 = 3.34", False),
        ("7/2 = 3.5", True),
        ("7/2 = 3.50", True),
        ("7/2 = 4", False),
        ("2/3 = 0.67", True),
        ("2/3 = 0.66", False),
        ("1/8 = 0.13", True),
        ("1/8 = 0.12", True),
        ("0.1 + 0.2 = 0.3", True),
        ("1/3 = 0.333333", True),
        ("1000000 * 1000000 = 1000000000001", True),
        ("1000000 * 1000000 = 1000002000000", False),
    ],
)
def test_rounding_tolerance(text: str, ok: bool):
    """A claim with d >= 1 decimals may be rounded to d decimals; integer claims only get 1e-6 relative."""
    (equation,) = find_equations(text)
    assert equation.ok is ok


def test_claim_ok_rule_directly():
    assert claim_ok(10 / 3, 3.33, 2) and claim_ok(10 / 3, 3.3, 1)
    assert not claim_ok(10 / 3, 3.0, 0) and not claim_ok(10 / 3, 3.0, 1)
    assert claim_ok(1024.0, 1024.0005, 0) and not claim_ok(1024.0, 1024.01, 0)


def test_text_without_equations_is_no_slip_found():
    assert find_equations("She sells the remainder for two dollars each.") == []
    assert arithmetic_label("") == "no_slip_found"


def test_method_descriptions_are_one_line():
    assert ARITHMETIC_METHOD.startswith("arithmetic re-check (judge-free): explicit `expr = number`")
    assert "\n" not in ARITHMETIC_METHOD and "\n" not in JUDGE_METHOD


def test_judge_messages_fill_the_template_with_one_user_message():
    question, solution = "What is {x}?", "16 * 64 = 1120\nSo {18}."
    messages = judge_messages(question, "18", solution)
    expected = JUDGE_PROMPT.format(question=question, gold="18", solution=solution)
    assert messages == [{"role": "user", "content": expected}]
    content = messages[0]["content"]
    assert "What is {x}?" in content and "Correct final answer: 18" in content and "So {18}." in content
    assert content.rstrip().endswith("`Label: calculation` or `Label: reasoning`.")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The product is wrong.\nLabel: calculation", "calculation"),
        ("label: REASONING.", "reasoning"),
        ("**Label:** Calculation", "calculation"),
        ("**Label: reasoning**", "reasoning"),
        ("- Label: `calculation`!", "calculation"),
        ("Label: calculation error", "calculation"),
        ("Label: reasoning\nOn reflection...\nLabel: calculation", "calculation"),
        ("Label: calculation\nLabel: unsure", None),
        ("Label: calculation or reasoning", None),
        ("It is a calculation error.", None),
        ("", None),
        ("Label:", None),
    ],
)
def test_parse_judge_label_reads_the_last_label_line(text: str, label: str | None):
    assert parse_judge_label(text) == label


def test_summarize_counts_and_rates_over_all_samples():
    labels = ["calculation", "reasoning", "reasoning", None, "calculation", "calculation"]
    assert summarize(labels, num_samples=10) == {
        "num_samples": 10,
        "num_labelled": 5,
        "counts": {"calculation": 3, "reasoning": 2, "no_slip_found": 0, "unlabelled": 1},
        "rates": {"calculation_rate": 0.3, "reasoning_rate": 0.2, "no_slip_found_rate": 0.0, "unlabelled_rate": 0.1},
    }


def test_summarize_arithmetic_labels_and_empty_checkpoint():
    assert summarize(["no_slip_found", "calculation", "no_slip_found", "no_slip_found"], 8)["rates"] == {
        "calculation_rate": 0.125, "reasoning_rate": 0.0, "no_slip_found_rate": 0.375, "unlabelled_rate": 0.0,
    }
    assert summarize([], 0) == {
        "num_samples": 0,
        "num_labelled": 0,
        "counts": {"calculation": 0, "reasoning": 0, "no_slip_found": 0, "unlabelled": 0},
        "rates": {"calculation_rate": 0.0, "reasoning_rate": 0.0, "no_slip_found_rate": 0.0, "unlabelled_rate": 0.0},
    }


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown label 'calc'"):
        summarize(["calc"], 1)
    with pytest.raises(ValueError, match="num_samples=1 is smaller than the 2 labels"):
        summarize(["reasoning", "reasoning"], 1)
