"""GSM-Symbolic expressions: exact numbers, vocabulary words, and an ``ast``-whitelist evaluator.

Template expressions (``#init``, ``#conditions``, ``#answer``; see ``lib/gsm_symbolic.py``) are Python
syntax. :func:`compile_expression` turns a whitelisted tree into nested closures (no ``eval``): names,
numbers, strings, arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``, lists, tuples,
indexing/slicing and the calls in :data:`FUNCTIONS`; anything else raises :class:`TemplateError`.
Arithmetic is exact: ``/`` gives a ``Fraction`` and a float literal ``0.1`` is 1/10.

A :class:`Word` is a vocabulary entry ("half" = 1/2): the question shows its text, expressions see its
value. :data:`VOCABULARIES` are ours (the authors' are unpublished), written from what the templates'
defaults and answers require.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

# ----------------------------------------------------------------------------------------------------
# Words and quantities


@dataclass(frozen=True)
class Word:
    """A vocabulary entry: ``text`` goes into the question, ``value`` into the expressions."""

    text: str
    value: Any


_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
CARDINALS: dict[str, int] = {w: i for i, w in enumerate(_UNITS)}
CARDINALS.update({w: 10 * i for i, w in enumerate(_TENS) if i >= 2})
for _t in range(2, 10):
    for _u in range(1, 10):
        CARDINALS[f"{_TENS[_t]}-{_UNITS[_u]}"] = 10 * _t + _u
CARDINAL_WORDS: dict[int, str] = {v: k for k, v in CARDINALS.items()}

_ORDINALS = {"half": 2, "halves": 2, "third": 3, "quarter": 4, "fourth": 4, "fifth": 5, "sixth": 6,
             "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10}
MULTIPLIERS = {"twice": 2, "double": 2, "thrice": 3, "triple": 3, "quadruple": 4}


def quantity(text: str) -> int | Fraction | None:
    """The number a phrase names, or None: "12", "1,000", "0.25", "1/2", "forty-two", "half",
    "a third", "two-thirds", "three quarters", "twice", "three times"."""
    t = text.strip().lower()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+|-?\d+", t):
        return int(t.replace(",", ""))
    if re.fullmatch(r"-?\d*\.\d+", t):
        return Fraction(t)
    if m := re.fullmatch(r"(\d+)\s*/\s*(\d+)", t):
        return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
    if t in CARDINALS:
        return CARDINALS[t]
    if t in MULTIPLIERS:
        return MULTIPLIERS[t]
    if m := re.fullmatch(r"([a-z-]+) times", t):
        return CARDINALS.get(m.group(1))
    words = re.split(r"[\s-]+", t)
    if words and words[-1].rstrip("s") in _ORDINALS or (words and words[-1] in _ORDINALS):
        last = words[-1] if words[-1] in _ORDINALS else words[-1].rstrip("s")
        count = words[:-1]
        numerator = 1 if not count or count in (["a"], ["one"], ["an"]) else CARDINALS.get(" ".join(count))
        return None if numerator is None else Fraction(numerator, _ORDINALS[last])
    return None


def _words(*phrases: str) -> list[Word]:
    out = []
    for phrase in phrases:
        value = quantity(phrase)
        assert value is not None, phrase
        out.append(Word(phrase, value))
    return out


# What each vocabulary must hold was read from the templates: the defaults of the variables drawn from
# it and how #answer uses them (e.g. ``{frac,half}`` with ``n * frac`` -> "half" is 1/2).
_MALE = ["James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles",
         "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Paul", "Andrew", "Kevin", "Brian", "George",
         "Peter", "Jerry", "Roger", "Frank", "Ben", "Jack", "Carlos", "Mohammed", "Hiroshi", "Luis"]
_FEMALE = ["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah", "Karen", "Lisa",
           "Nancy", "Emily", "Sophie", "Julia", "Emma", "Olivia", "Ava", "Mia", "Isabella", "Sofia",
           "Grace", "Chloe", "Hannah", "Amelia", "Maria", "Fatima", "Yuki", "Priya", "Elena", "Aisha"]
VOCABULARIES: dict[str, list[Any]] = {
    "names_male": _MALE,
    "names_female": _FEMALE,
    "names": _MALE + _FEMALE,
    "currencies_sym": ["$", "€", "£", "¥", "₹"],
    "weekdays": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "colors": ["red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "teal"],
    "fruits": ["apple", "banana", "pineapple", "kiwi", "mango", "orange", "pear", "peach", "plum", "lemon"],
    "sports": ["basketball", "soccer", "tennis", "volleyball", "baseball", "hockey", "badminton", "golf"],
    "cities": ["Los Angeles", "New York", "Chicago", "Houston", "Seattle", "Boston", "Denver", "Miami"],
    "weights_sm": ["ounce", "gram"],
    "weights_med": ["pound", "kilogram"],
    "length_lg": ["mile", "kilometer"],
    # fractions as words, as digits, and both ("alnum"); "fraction_nums"'s first four are the unit
    # fractions one template slices (``fraction_nums[:4]`` for a "1/2 off" discount).
    "fractions": _words("half", "one-third", "one-quarter", "one-fifth", "two-thirds", "three-quarters"),
    "fraction_alph": _words("half", "a third", "a quarter", "a fifth", "a tenth", "two-thirds", "three-quarters"),
    "fraction_nums": _words("1/2", "1/3", "1/4", "1/5", "2/3", "3/4", "2/5", "3/5", "1/10"),
    "fraction_alnum": _words("half", "1/2", "one-third", "1/3", "two-thirds", "2/3", "one-quarter", "1/4",
                             "three quarters", "3/4", "one-fifth", "1/5", "three-fifths", "3/5"),
    "fraction_decimals": [Fraction(x) for x in ("0.1", "0.2", "0.25", "0.3", "0.4", "0.5", "0.6", "0.7", "0.75", "0.8", "0.9")],
    # multipliers: "twice" is 2 (the #answer multiplies by it); the authors' two lists are not told apart
    "multi_times": _words("twice", "three times", "four times", "five times"),
    "multiple_ice": _words("twice", "three times", "four times"),
    "multiple": _words("double", "triple", "quadruple"),
}


def to_exact(value: Any) -> Any:
    """int, Fraction or str; floats (only from outside) become decimal fractions."""
    if isinstance(value, bool) or isinstance(value, (int, str, Fraction)):
        return value
    if isinstance(value, float):
        return Fraction(repr(value))
    return value


def answer_text(value: Any) -> str | None:
    """An answer as text when it is an integer or an exactly representable decimal, else None."""
    value = to_exact(value.value if isinstance(value, Word) else value)
    if isinstance(value, bool) or not isinstance(value, (int, Fraction)):
        return None
    if isinstance(value, int) or value.denominator == 1:
        return str(int(value))
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return None
    places = max(twos, fives)
    text = f"{abs(value.numerator) * 10**places // value.denominator:0{places + 1}d}"
    return ("-" if value < 0 else "") + text[:-places] + "." + text[-places:]


# ----------------------------------------------------------------------------------------------------
# The expression interpreter (an ast whitelist)


class TemplateError(ValueError):
    """A template that cannot be parsed or evaluated; the message names the template and line."""


def value_of(x: Any) -> Any:
    return x.value if isinstance(x, Word) else x


def _div(a: Any, b: Any) -> Any:
    if isinstance(a, (int, Fraction)) and isinstance(b, (int, Fraction)):
        return Fraction(a) / Fraction(b)
    return a / b


def _pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, Fraction)) and abs(b) > 64:
        raise ValueError(f"exponent {b} too large")
    result = a**b
    return to_exact(result)


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: _div,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


def is_int(x: Any) -> bool:
    x = to_exact(value_of(x))
    return isinstance(x, int) or (isinstance(x, Fraction) and x.denominator == 1)


def divides(a: Any, b: Any) -> bool:
    """``divides(a, b)``: ``a`` is a multiple of ``b`` (as the templates use it: ``divides(x, m + n)``
    guards ``x // (m + n)``)."""
    a, b = to_exact(value_of(a)), to_exact(value_of(b))
    return b != 0 and a % b == 0


def _arange(start: Any, stop: Any, step: Any = 1) -> list:
    start, stop, step = (Fraction(to_exact(value_of(v))) for v in (start, stop, step))
    if step <= 0:
        raise ValueError("arange step must be > 0")
    count = max(0, -((start - stop) // step))
    values = [start + i * step for i in range(int(count))]
    return [int(v) if v.denominator == 1 else v for v in values]


def _range(*args: Any) -> list[int]:
    ints = [int(value_of(a)) for a in args]
    if len(range(*ints)) > 1_000_000:
        raise ValueError("range too long")
    return list(range(*ints))


def _numbers_within(lo: Any, hi: Any) -> list[int]:
    return list(range(int(lo), int(hi) + 1))


def _randint(lo: Any, hi: Any, size: Any = None) -> list[int]:
    return list(range(int(lo), int(hi)))


def _fraction(*args: Any) -> Fraction:
    return Fraction(*(to_exact(value_of(a)) for a in args))


def _round(x: Any, ndigits: Any = None) -> Any:
    return round(to_exact(value_of(x))) if ndigits is None else round(to_exact(value_of(x)), int(ndigits))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "int": lambda x: int(value_of(x)), "round": _round, "abs": lambda x: abs(value_of(x)),
    "min": lambda *a: min(value_of(x) for x in a), "max": lambda *a: max(value_of(x) for x in a),
    "Fraction": _fraction, "is_int": is_int, "divides": divides, "float": lambda x: to_exact(value_of(x)),
    "range": _range, "list": list, "len": len, "numbers_within": _numbers_within,
    "np.arange": _arange, "arange": _arange, "frange": _arange, "np.random.randint": _randint, "randint": _randint,
    "shuffle_list": list, "fix_floats": list,  # no change to a uniform draw from the list
}
SAMPLERS = ("sample", "sample_sequential")


def dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted_name(node.value)):
        return f"{base}.{node.attr}"
    return None


Env = dict[str, Any]
Compiled = Callable[[Env], Any]


def _list_op(op: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    """list + list, list * n (bounded), else exact arithmetic on values."""
    if isinstance(left, list) or isinstance(right, list):
        if op is operator.mul:
            seq, times = (left, right) if isinstance(left, list) else (right, left)
            if len(seq) * int(value_of(times)) > 1_000_000:
                raise ValueError("list too long")
        return op(left, right)
    return to_exact(op(value_of(left), value_of(right)))


def _subscript(target: Any, index: Any) -> Any:
    index = int(value_of(index))
    return (target.text, target.value)[index] if isinstance(target, Word) else target[index]


def _tuple(items: list[Any]) -> Any:
    """A ("word", value) pair (or (5, 5)) is a Word; other tuples stay tuples."""
    if len(items) == 2 and isinstance(items[0], (str, int, Fraction)) and isinstance(items[1], (int, Fraction)):
        return Word(items[0] if isinstance(items[0], str) else answer_text(items[0]), items[1])
    return tuple(items)


def compile_expression(node: ast.AST) -> Compiled:
    """Compile a whitelisted expression tree to a function of the variables; anything outside the
    whitelist (attributes, lambdas, comprehensions, unknown calls, ...) raises :class:`TemplateError`."""
    if isinstance(node, ast.Expression):
        return compile_expression(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, float):
            value: Any = Fraction(repr(node.value))
        elif isinstance(node.value, (bool, int, str)):
            value = node.value
        else:
            raise TemplateError(f"constant {node.value!r} not allowed")
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id

        def lookup(env: Env) -> Any:
            if name in env:
                return env[name]
            if name in VOCABULARIES:
                return list(VOCABULARIES[name])
            raise TemplateError(f"unknown name {name!r}")

        return lookup
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op, left, right = _BINOPS[type(node.op)], compile_expression(node.left), compile_expression(node.right)
        return lambda env: _list_op(op, left(env), right(env))
    if isinstance(node, ast.UnaryOp) and type(node.op) in (ast.USub, ast.UAdd, ast.Not):
        unary = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}[type(node.op)]
        operand = compile_expression(node.operand)
        return lambda env: unary(value_of(operand(env)))
    if isinstance(node, ast.BoolOp):
        values = [compile_expression(v) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda env: all(value_of(v(env)) for v in values)
        return lambda env: any(value_of(v(env)) for v in values)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        first = compile_expression(node.left)
        chain = [(_COMPARE[type(op)], compile_expression(c)) for op, c in zip(node.ops, node.comparators)]

        def compare(env: Env) -> bool:
            left = value_of(first(env))
            for op, comparator in chain:
                right = value_of(comparator(env))
                if not op(left, right):
                    return False
                left = right
            return True

        return compare
    if isinstance(node, ast.IfExp):
        test, body, orelse = (compile_expression(n) for n in (node.test, node.body, node.orelse))
        return lambda env: body(env) if value_of(test(env)) else orelse(env)
    if isinstance(node, (ast.List, ast.Tuple)):
        elts = [compile_expression(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return lambda env: _tuple([e(env) for e in elts])
        return lambda env: [e(env) for e in elts]
    if isinstance(node, ast.Subscript):
        target = compile_expression(node.value)
        if isinstance(node.slice, ast.Slice):
            parts = [None if b is None else compile_expression(b) for b in (node.slice.lower, node.slice.upper, node.slice.step)]
            return lambda env: target(env)[slice(*(None if p is None else int(value_of(p(env))) for p in parts))]
        index = compile_expression(node.slice)
        return lambda env: _subscript(target(env), index(env))
    if isinstance(node, ast.Call) and not node.keywords:
        name = dotted_name(node.func)
        if name in SAMPLERS:
            raise TemplateError(f"{name}(...) only as the whole right-hand side of an #init line")
        if name not in FUNCTIONS:
            raise TemplateError(f"function {name or ast.unparse(node.func)!r} not allowed")
        function, args = FUNCTIONS[name], [compile_expression(a) for a in node.args]
        return lambda env: function(*(a(env) for a in args))
    raise TemplateError(f"expression {ast.unparse(node)!r} not allowed ({type(node).__name__})")


def evaluate(node: ast.AST, env: Env) -> Any:
    """Compile and evaluate once (see :func:`compile_expression`)."""
    return compile_expression(node)(env)


@dataclass(frozen=True)
class Expression:
    """One template expression: its source, its tree and its compiled form."""

    source: str
    tree: ast.Expression
    run: Compiled


def parse_expression(source: str) -> ast.Expression:
    """Parse one expression; ``$name`` is read as ``name``. SyntaxError -> TemplateError."""
    text = re.sub(r"\$(?=[A-Za-z_])", "", source.strip())
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise TemplateError(f"cannot parse {source.strip()!r}: {err.msg}") from None


def compile_source(source: str, where: str) -> Expression:
    """Parse and compile one template expression; errors name ``where`` and the expression."""
    tree = parse_expression(source)
    try:
        return Expression(source.strip(), tree, compile_expression(tree))
    except TemplateError as err:
        raise TemplateError(f"{where}: {source.strip()!r}: {err}") from None


# ----------------------------------------------------------------------------------------------------
# Numbers as question text


def _number_text(value: Any, default: str) -> str:
    """A number in the form of the slot's default: a word ("two"), "p/q", or digits (padded decimals)."""
    d = default.strip().lower()
    if isinstance(value, int) and d in CARDINALS and value in CARDINAL_WORDS:
        return CARDINAL_WORDS[value]
    if isinstance(value, Fraction) and value.denominator != 1 and re.fullmatch(r"\d+\s*/\s*\d+", d):
        return f"{value.numerator}/{value.denominator}"
    text = answer_text(value)
    if text is None:
        return f"{value.numerator}/{value.denominator}"
    if "," in default and "." not in text and abs(int(text)) >= 1000:
        text = f"{int(text):,}"
    if m := re.fullmatch(r"-?[\d,]*\.(\d+)", default.strip()):
        places = len(m.group(1))
        whole, _, frac = text.partition(".")
        if len(frac) <= places:
            text = f"{whole}.{frac.ljust(places, '0')}"
    return text


def render_slot(value: Any, default: str, sentence_start: bool = False) -> str:
    """What a slot shows for a drawn value; capitalised like its default or at a sentence start."""
    if isinstance(value, Word):
        number = quantity(value.text)
        text = _number_text(number, default) if re.fullmatch(r"[\d.,]+", value.text) and number is not None else value.text
    elif isinstance(value, str):
        text = default if value.lower() == default.lower() else value
    else:
        text = _number_text(to_exact(value), default)
    if (sentence_start or default[:1].isupper()) and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text
