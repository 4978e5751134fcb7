"""GSM-Symbolic expressions: the ast whitelist, exact arithmetic, and the words the templates' defaults use."""

from __future__ import annotations

from fractions import Fraction

import pytest

from lib.symbolic_expr import VOCABULARIES, TemplateError, Word, answer_text, evaluate, parse_expression, quantity


@pytest.mark.parametrize(
    "source",
    ["__import__('os')", "().__class__", "(lambda: 1)()", "[x for x in range(3)]", "open('f')", "range(3).index(1)"],
)
def test_evaluator_refuses_code_outside_its_whitelist(source):
    """Attributes, lambdas, comprehensions and unknown calls raise TemplateError, never run."""
    with pytest.raises(TemplateError):
        evaluate(parse_expression(source), {})


def test_arithmetic_is_exact():
    """`/` and decimal literals are exact fractions, so is_int and answers have no float error."""
    env = {"frac": Word("half", Fraction(1, 2)), "x": 7}
    assert evaluate(parse_expression("0.1 + 0.2 == 0.3"), {}) is True
    assert evaluate(parse_expression("is_int(x / 2 * 2) and not is_int(x * frac)"), env) is True
    assert evaluate(parse_expression("is_int(1 / 3 * 3) and 7 / 10 == 0.7"), {}) is True  # floats: 0.9999999999999999
    assert evaluate(parse_expression("divides(12, 4) and not divides(12, 5) and not divides(3, 0)"), {}) is True
    assert evaluate(parse_expression("frac[0] + ' ' + str_"), {"frac": env["frac"], "str_": "x"}) == "half x"
    assert (answer_text(Fraction(-5, 4)), answer_text(Fraction(1, 3)), answer_text(Fraction(10, 2))) == ("-1.25", None, "5")


@pytest.mark.parametrize(
    ("text", "value"),
    [("half", Fraction(1, 2)), ("a third", Fraction(1, 3)), ("two-thirds", Fraction(2, 3)), ("three quarters", Fraction(3, 4)),
     ("twice", 2), ("three times", 3), ("forty-two", 42), ("1,000", 1000), ("0.25", Fraction(1, 4)), ("1/16", Fraction(1, 16)),
     ("Los Angeles", None)],
)
def test_quantity_reads_the_words_the_defaults_use(text, value):
    """The defaults' number words and fractions map to the values the #answer expressions need."""
    assert quantity(text) == value


def test_fraction_vocabularies_hold_values_not_just_words():
    """A vocabulary word carries its value (the juggler's "half" of the balls is n * 1/2)."""
    assert [w.value for w in VOCABULARIES["fraction_nums"][:4]] == [Fraction(1, 2), Fraction(1, 3), Fraction(1, 4), Fraction(1, 5)]
    assert all(isinstance(w, Word) and w.value == quantity(w.text) for w in VOCABULARIES["multi_times"])
