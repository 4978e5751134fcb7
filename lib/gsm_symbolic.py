"""GSM-Symbolic: parse the published templates and draw seeded instances with exact answers.

A template (``../shared/data/gsm_symbolic/templates/{symbolic,p1,p2}/NNNN.json``, field
``question_annotated``) is a question with ``{var,default}`` slots followed by three sections::

    #init:        - $x = range(10, 500, 10)         one line per variable (or tuple of variables)
                  - n1, n2 = sample(names, 2)
    #conditions:  - divides(x * 12, k * y)          every line must hold for an instance to count
    #answer: int((k * y) / (x * 12) * 100)

An instance draws every ``#init`` line, keeps the draw if all conditions hold, fills the slots and
evaluates ``#answer``. Expressions are Python syntax run by ``lib.symbolic_expr`` (an ``ast``
whitelist, no ``eval``) with exact arithmetic (``/`` gives a ``Fraction``, float literals become
decimal fractions), so ``is_int`` and the answer's "integer or exact decimal" test are exact.

``#init`` semantics (the authors' generator is not published; this is ours):

- ``sample(P)`` draws one element of population ``P``, ``sample(P, k)`` k distinct ones,
  ``sample_sequential(P, k)`` k consecutive ones (cyclic: Saturday, Sunday, Monday).
- any other right-hand side must evaluate to a list, from which one element is drawn: ``range``,
  ``np.arange``/``frange`` (exact decimal steps), ``numbers_within(a, b)`` (a..b inclusive, shown as
  words where the default is a word), list literals, ``list(...) * 10``, a vocabulary name.
  ``shuffle_list`` and ``fix_floats`` change nothing about a uniform draw from that list, and
  ``np.random.randint(lo, hi, size)`` is read as the population ``lo..hi-1`` it draws from.
- a ``("word", value)`` pair and every vocabulary entry is a :class:`Word`: the question shows its
  text, expressions see its value (``w[0]`` and ``w[1]`` index text and value, as one template does).

A template whose conditions no draw meets within ``max_draws`` (per instance) is reported in
:attr:`Generation.failures`, never looped on. ``python -m lib.gsm_symbolic --instances 50`` prints the
checks per variant; :func:`load_questions` serves the evaluation datasets (:data:`DATASETS`).
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from lib.data import DataError, Question, resolve_data_file
from lib.symbolic_expr import (
    SAMPLERS,
    Compiled,
    Expression,
    TemplateError,
    Word,
    dotted_name,
    value_of,
    answer_text,
    compile_expression,
    compile_source,
    evaluate,
    parse_expression,
    quantity,
    render_slot,
    to_exact,
)

log = logging.getLogger(__name__)

VARIANTS = ("symbolic", "p1", "p2")
DEFAULT_MAX_DRAWS = 100_000  # draws per instance before a template is reported as unsatisfiable
# Evaluation datasets: instances of each variant, and the 100 GSM8K test questions they come from.
ORIGINAL_DATASET = "gsm_symbolic_original"
DATASETS = {"gsm_symbolic": "symbolic", "gsm_symbolic_p1": "p1", "gsm_symbolic_p2": "p2", ORIGINAL_DATASET: None}
DEFAULT_INSTANCES = 1

# ----------------------------------------------------------------------------------------------------
# Templates


SLOT = re.compile(r"\{\s*([A-Za-z_]\w*)\s*,\s*([^{}]*?)\s*\}")


@dataclass(frozen=True)
class InitLine:
    """One ``#init`` line: its targets, its population and how it is drawn."""

    source: str
    targets: tuple[str, ...]
    population: tuple[Any, ...]
    how: str  # "choice" (one element), "sample" (k distinct), "sequential" (k consecutive, cyclic)


@dataclass(frozen=True)
class Template:
    id: str  # "symbolic/0005"
    variant: str
    number: str  # "0005"
    id_orig: int  # index into GSM8K test
    question: str  # with {var,default} slots
    inits: tuple[InitLine, ...]
    conditions: tuple[Expression, ...]
    answer: Expression
    original_question: str
    original_answer: str  # after ####, commas removed
    slots: dict[str, list[str]] = field(default_factory=dict)  # var -> its defaults, in order


def _sections(text: str, where: str) -> tuple[str, list[str], list[str], str]:
    """Split ``question_annotated`` into body, init lines, condition lines and the answer expression."""
    if "#init:" not in text:
        raise TemplateError(f"{where}: no '#init:' section")
    body, rest = text.split("#init:", 1)
    match = re.search(r"^\s*#answer\s*[:=]", rest, flags=re.M)
    if not match:
        raise TemplateError(f"{where}: no '#answer:' line")
    answer = rest[match.end():].strip()
    rest = rest[: match.start()]
    init_part, _, cond_part = rest.partition("#conditions:")

    def items(part: str) -> list[str]:
        return [line.strip()[1:].strip() for line in part.splitlines() if line.strip().startswith("-")]

    if answer.startswith("{") and answer.endswith("}"):
        answer = answer[1:-1]
    return body.strip(), items(init_part), items(cond_part), answer


def _init_line(source: str, where: str) -> InitLine:
    match = re.fullmatch(r"((?:\$?\s*[A-Za-z_]\w*\s*,\s*)*\$?\s*[A-Za-z_]\w*)\s*=(?!=)\s*(.+)", source)
    if not match:
        raise TemplateError(f"{where}: #init line {source!r} is not 'name[, name...] = expression'")
    targets = tuple(t.strip().lstrip("$").strip() for t in match.group(1).split(","))
    tree = parse_expression(match.group(2)).body
    how, k = "choice", 1
    if isinstance(tree, ast.Call) and dotted_name(tree.func) in SAMPLERS:
        if not 1 <= len(tree.args) <= 2 or tree.keywords:
            raise TemplateError(f"{where}: {source!r}: sample takes (population[, k])")
        k = int(evaluate(tree.args[1], {})) if len(tree.args) == 2 else 1
        how = "sequential" if dotted_name(tree.func) == "sample_sequential" else ("sample" if len(tree.args) == 2 else "choice")
        tree = tree.args[0]
    try:
        population = evaluate(tree, {})
    except TemplateError as err:
        raise TemplateError(f"{where}: #init {source!r}: {err}") from None
    if not isinstance(population, (list, tuple)) or not population:
        raise TemplateError(f"{where}: #init {source!r} does not give a non-empty list to draw from")
    if k != len(targets):
        raise TemplateError(f"{where}: #init {source!r}: {len(targets)} names but {k} draws")
    if how != "choice" and len(population) < k:
        raise TemplateError(f"{where}: #init {source!r}: population of {len(population)} < {k}")
    return InitLine(source, targets, tuple(population), how)


def parse_template(record: dict[str, Any], template_id: str) -> Template:
    """A :class:`Template` from one JSON record; TemplateError names the template and line."""
    for key in ("question_annotated", "question", "answer", "id_orig"):
        if key not in record:
            raise TemplateError(f"{template_id}: missing field {key!r}")
    body, init_lines, cond_lines, answer = _sections(record["question_annotated"], template_id)
    slots: dict[str, list[str]] = {}
    for m in SLOT.finditer(body):
        slots.setdefault(m.group(1), []).append(m.group(2))
    leftover = SLOT.sub("", body)
    if "{" in leftover or "}" in leftover:
        raise TemplateError(f"{template_id}: a brace in the question is not a {{var,default}} slot")
    inits = tuple(_init_line(line, template_id) for line in init_lines)
    conditions = tuple(compile_source(line, f"{template_id}: #conditions") for line in cond_lines)
    variant, number = template_id.split("/")
    return Template(
        id=template_id, variant=variant, number=number, id_orig=int(record["id_orig"]), question=body,
        inits=inits, conditions=conditions, answer=compile_source(answer, f"{template_id}: #answer"),
        original_question=record["question"], original_answer=record["answer"].rsplit("####", 1)[-1].replace(",", "").strip(),
        slots=slots,
    )


def load_templates(variant: str, data_dir: str | Path | None = None) -> list[Template]:
    """All templates of one variant (``symbolic``, ``p1``, ``p2``), in file order, from the data
    directory (``lib.data``'s resolution: ``data_dir``, $MATHRAY_DATA_DIR, ../shared/data, ...)."""
    if variant not in VARIANTS:
        raise TemplateError(f"unknown GSM-Symbolic variant {variant!r} (known: {', '.join(VARIANTS)})")
    folder = resolve_data_file(f"gsm_symbolic/templates/{variant}/0000.json", data_dir).parent
    files = sorted(folder.glob("*.json"))
    if not files:
        raise TemplateError(f"no templates in {folder}")
    out = []
    for path in files:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise TemplateError(f"{path}: malformed JSON: {err.msg} (line {err.lineno})") from None
        out.append(parse_template(record, f"{variant}/{path.stem}"))
    return out


# ----------------------------------------------------------------------------------------------------
# Defaults, drawing and rendering


def _default_value(line: InitLine | None, default: str) -> Any:
    """A slot's default text as a value: the population's entry with that text (a Word or a string),
    else the number it names (a number word stays a Word, so it renders as written), else the text."""
    if line is not None:
        for item in line.population:
            text = item.text if isinstance(item, Word) else item
            if isinstance(text, str) and text.lower() == default.lower():
                return item
    number = quantity(default)
    if number is None:
        return default
    return number if re.fullmatch(r"[\d.,/\s-]+", default) else Word(default, number)


def _solve_linear(tree: ast.Expression, name: str, env: dict[str, Any]) -> Any:
    """The value of ``name`` that makes the equality ``tree`` hold, if it is linear in ``name``."""
    eq = tree.body
    if not (isinstance(eq, ast.Compare) and len(eq.ops) == 1 and isinstance(eq.ops[0], ast.Eq)):
        return None
    diff = ast.Expression(ast.BinOp(eq.left, ast.Sub(), eq.comparators[0]))
    try:
        f0 = evaluate(diff, {**env, name: 0})
        f1 = evaluate(diff, {**env, name: 1})
        if f1 == f0:
            return None
        x = to_exact(Fraction(-f0) / (f1 - f0))
        x = int(x) if x.denominator == 1 else x
        return x if evaluate(diff, {**env, name: x}) == 0 else None
    except (ArithmeticError, TypeError, ValueError, TemplateError):
        return None


def default_values(template: Template) -> dict[str, Any]:
    """Every variable at its default: the slot's default text, read through the variable's #init
    population (``{frac,half}`` -> the Word "half" = 1/2); a variable without a slot (``$ans``) is
    solved from an equality condition when one determines it."""
    lines = {name: line for line in template.inits for name in line.targets}
    env: dict[str, Any] = {}
    for name, defaults in template.slots.items():
        env[name] = _default_value(lines.get(name), defaults[0])
    for name in lines:
        if name not in env:
            for condition in template.conditions:
                if re.search(rf"\b{name}\b", condition.source) and (x := _solve_linear(condition.tree, name, env)) is not None:
                    env[name] = x
                    break
    return env


def _holds(conditions: Sequence[Expression], env: dict[str, Any]) -> bool:
    for condition in conditions:
        try:
            if not value_of(condition.run(env)):
                return False
        except (ArithmeticError, TypeError, ValueError):
            return False
    return True


def conditions_hold(template: Template, env: dict[str, Any]) -> bool:
    """True when every condition evaluates true (an arithmetic error counts as false)."""
    return _holds(template.conditions, env)


@dataclass(frozen=True)
class _Step:
    """One step of a joint draw: draw an init line, or solve a variable from an equality condition;
    then check the conditions whose variables are all known."""

    line: InitLine
    solve: Compiled | None
    checks: tuple[Expression, ...]


def _names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _equalities(template: Template) -> dict[str, ast.expr]:
    """Variables an equality condition fixes given the others (``ans == n - w1 * n1``): drawn from a
    numeric population, one target, not on the other side."""
    lines = {line.targets[0]: line for line in template.inits if line.how == "choice" and len(line.targets) == 1}
    out: dict[str, ast.expr] = {}
    for condition in template.conditions:
        eq = condition.tree.body
        if not (isinstance(eq, ast.Compare) and len(eq.ops) == 1 and isinstance(eq.ops[0], ast.Eq)):
            continue
        for side, other in ((eq.left, eq.comparators[0]), (eq.comparators[0], eq.left)):
            if isinstance(side, ast.Name) and side.id in lines and side.id not in out and side.id not in _names(other):
                if all(isinstance(v, (int, Fraction)) and not isinstance(v, bool) for v in lines[side.id].population):
                    out[side.id] = other
                    break
    return out


def _schedule(template: Template) -> list[_Step]:
    """The steps of one joint draw. Conditions are checked as soon as their variables are known, so a
    failing draw stops early; a variable an equality fixes is computed rather than drawn, and the draw
    is rejected when the value is not in its population. Both give the same distribution as drawing
    everything and rejecting: uniform over the valid joint draws."""
    solvable = _equalities(template)
    drawn = {name for line in template.inits for name in line.targets}
    known: set[str] = set()
    order: list[tuple[InitLine, Compiled | None]] = []
    pending = dict(solvable)
    for line in template.inits:
        if len(line.targets) == 1 and line.targets[0] in solvable:
            continue
        order.append((line, None))
        known.update(line.targets)
        progress = True
        while progress:
            progress = False
            for name, expr in list(pending.items()):
                if (_names(expr) & drawn) <= known:
                    line_of = next(li for li in template.inits if li.targets == (name,))
                    order.append((line_of, compile_expression(expr)))
                    known.add(name)
                    del pending[name]
                    progress = True
    for name in pending:  # depends on a variable never drawn: draw it after all
        order.append((next(li for li in template.inits if li.targets == (name,)), None))
    position = {name: i for i, (line, _) in enumerate(order) for name in line.targets}
    checks: list[list[Expression]] = [[] for _ in order]
    for condition in template.conditions:  # (without #init lines, draw_instances checks them all at the end)
        steps = [position[n] for n in _names(condition.tree) if n in position]
        if checks:
            checks[max(steps, default=len(checks) - 1)].append(condition)
    return [_Step(line, solve, tuple(c)) for (line, solve), c in zip(order, checks)]


def _draw_once(steps: list[_Step], rng: random.Random, late: Sequence[Expression] = ()) -> dict[str, Any] | None:
    """One joint draw of every #init line, or None as soon as a condition fails."""
    env: dict[str, Any] = {}
    for step in steps:
        line = step.line
        if step.solve is None and line.how == "choice":  # the common case, inlined: int(random() * n) is uniform
            env[line.targets[0]] = line.population[int(rng.random() * len(line.population))]
        elif step.solve is None:
            env.update(zip(line.targets, _draw(line, rng)))
        else:
            try:
                value = to_exact(value_of(step.solve(env)))
            except (ArithmeticError, TypeError, ValueError):
                return None
            if value not in step.line.population:
                return None
            env[step.line.targets[0]] = int(value) if isinstance(value, Fraction) and value.denominator == 1 else value
        if step.checks and not _holds(step.checks, env):
            return None
    return env if _holds(late, env) else None


def evaluate_answer(template: Template, env: dict[str, Any]) -> Any:
    return value_of(template.answer.run(env))


def _draw(line: InitLine, rng: random.Random) -> list[Any]:
    pop = line.population
    if line.how == "choice":
        picked = [pop[int(rng.random() * len(pop))]]
    elif line.how == "sample":
        picked = rng.sample(pop, len(line.targets))
    else:
        start = int(rng.random() * len(pop))
        picked = [pop[(start + i) % len(pop)] for i in range(len(line.targets))]
    return picked


def render_question(template: Template, env: dict[str, Any]) -> str:
    """The question with every slot filled from ``env`` (a slot with no #init keeps its default)."""

    def fill(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        before = template.question[: m.start()].rstrip()
        return render_slot(env[name], default, not before or before[-1] in ".?!") if name in env else default

    return SLOT.sub(fill, template.question)


@dataclass(frozen=True)
class Instance:
    """One generated question; ``index`` is its position among its template's instances."""

    template_id: str
    index: int
    id_orig: int
    question: str
    answer: str | None  # None when not an integer or exact decimal
    answer_value: Any  # the exact value (a Fraction such as 16000/3 where ``answer`` is None)
    values: dict[str, Any]
    num_draws: int


@dataclass
class Generation:
    instances: list[Instance]
    failures: dict[str, str]  # template id -> why it yielded fewer instances than asked


def template_rng(template_id: str, seed: int) -> random.Random:
    """The template's own generator: the same (template, seed) always gives the same draws."""
    return random.Random(f"gsm_symbolic:{seed}:{template_id}")


def draw_instances(template: Template, num_instances: int, seed: int, max_draws: int = DEFAULT_MAX_DRAWS) -> Iterator[Instance]:
    """``num_instances`` instances whose conditions hold, by rejection sampling (so each is uniform over
    the valid draws); raises TemplateError when ``max_draws`` draws did not give the next one."""
    rng = template_rng(template.id, seed)
    steps = _schedule(template)
    late_checks = template.conditions if not template.inits else ()
    for index in range(num_instances):
        draws = 0
        while True:
            if draws >= max_draws:
                raise TemplateError(f"{template.id}: no draw met the conditions in {max_draws} tries (after {index} of {num_instances} instances)")
            draws += 1
            env = _draw_once(steps, rng, late_checks)
            if env is None:
                continue
            try:
                answer = evaluate_answer(template, env)
            except (ArithmeticError, TypeError, ValueError):
                continue
            yield Instance(template.id, index, template.id_orig, render_question(template, env), answer_text(answer), answer, env, draws)
            break


def generate(templates: Sequence[Template], num_instances: int, seed: int, max_draws: int = DEFAULT_MAX_DRAWS) -> Generation:
    """Instances of every template; templates that fall short are listed in ``failures``."""
    instances: list[Instance] = []
    failures: dict[str, str] = {}
    for template in templates:
        try:
            for instance in draw_instances(template, num_instances, seed, max_draws):
                instances.append(instance)
        except TemplateError as err:
            failures[template.id] = str(err)
    return Generation(instances, failures)


# ----------------------------------------------------------------------------------------------------
# Evaluation datasets


@dataclass(frozen=True)
class QuestionRef:
    """What a GSM-Symbolic question id records: ``<dataset>/<template>/gsm8k-test-<id_orig>[/<instance>]``."""

    dataset: str
    template: str  # "0005": the same number in symbolic, p1 and p2
    id_orig: int  # GSM8K test row
    instance: int | None  # None for the original question


def question_id(dataset: str, template: Template, instance: int | None = None) -> str:
    base = f"{dataset}/{template.number}/gsm8k-test-{template.id_orig}"
    return base if instance is None else f"{base}/{instance}"


def parse_question_id(qid: str) -> QuestionRef | None:
    """The parts of a GSM-Symbolic question id, or None for any other id."""
    m = re.fullmatch(r"([a-z0-9_]+)/(\d{4})/gsm8k-test-(\d+)(?:/(\d+))?", qid)
    if not m or m.group(1) not in DATASETS:
        return None
    return QuestionRef(m.group(1), m.group(2), int(m.group(3)), None if m.group(4) is None else int(m.group(4)))


def load_questions(
    dataset: str,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    limit: int | None = None,
    instances: int | None = None,
    seed: int = 0,
    max_draws: int = DEFAULT_MAX_DRAWS,
) -> list[Question]:
    """Questions of a GSM-Symbolic dataset for ``lib.data.load_dataset``: ``instances`` per template
    (default 1) drawn with ``seed`` from the first ``limit`` templates, template by template; or, for
    ``gsm_symbolic_original``, the GSM8K test questions of the first ``limit`` templates. A template
    whose conditions fail is logged and left out (its other instances too, so instance sets stay whole)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown GSM-Symbolic dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if split != "test":
        raise DataError(f"dataset {dataset!r} has no split {split!r} (available: test)")
    if instances is not None and instances < 1:
        raise DataError(f"{dataset}: instances must be >= 1, got {instances}")
    variant = DATASETS[dataset]
    try:
        templates = load_templates(variant or "symbolic", data_dir)[:limit]
    except TemplateError as err:
        raise DataError(str(err)) from None
    source = str(resolve_data_file(f"gsm_symbolic/templates/{variant or 'symbolic'}/0000.json", data_dir).parent)
    if variant is None:
        if instances is not None:
            raise DataError(f"{dataset}: the original questions take no 'instances'")
        return [Question(question_id(dataset, t), dataset, t.original_question.strip(), t.original_answer, source=source)
                for t in templates]
    count = DEFAULT_INSTANCES if instances is None else instances
    generation = generate(templates, count, seed, max_draws)
    for template_id, why in generation.failures.items():
        log.warning("%s: left out: %s", dataset, why)
    failed = set(generation.failures)
    by_id = {t.id: t for t in templates}
    return [
        Question(question_id(dataset, by_id[i.template_id], i.index), dataset, i.question, i.answer or str(i.answer_value), source=source)
        for i in generation.instances
        if i.template_id not in failed
    ]


def reference_answer(template: Template) -> str | None:
    """What an instance's answer is held to: GSM8K's answer for ``symbolic``; for p1/p2 (whose extra
    clauses change the answer) the template's own answer at its defaults, None where that fails."""
    return template.original_answer if template.variant == "symbolic" else answer_text_at_defaults(template)


def main(argv: list[str] | None = None) -> None:
    """``python -m lib.gsm_symbolic --instances 50``: generate every variant and print, per variant, the
    templates whose defaults miss the GSM8K answer, the templates left out, and non-integer answers."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    for variant in VARIANTS:
        templates = load_templates(variant, args.data_dir)
        start = time.monotonic()
        generation = generate(templates, args.instances, args.seed)
        seconds = time.monotonic() - start
        by_id = {t.id: t for t in templates}
        misses = [t.id for t in templates if variant == "symbolic" and reference_answer(t) != answer_text_at_defaults(t)]
        odd: dict[str, int] = {}
        for instance in generation.instances:
            ref = reference_answer(by_id[instance.template_id])
            if ref is not None and "." not in ref and (instance.answer is None or "." in instance.answer):
                odd[instance.template_id] = odd.get(instance.template_id, 0) + 1
        print(f"{variant}: {len(templates)} templates, {len(generation.instances)} instances in {seconds:.1f} s; "
              f"defaults != GSM8K answer: {misses or 'none'}; left out: {sorted(generation.failures) or 'none'}; "
              f"non-integer answers where the reference is an integer: {odd or 'none'}")


def answer_text_at_defaults(template: Template) -> str | None:
    """The template's #answer at its defaults as text (None when it cannot be evaluated)."""
    try:
        return answer_text(evaluate_answer(template, default_values(template)))
    except (TemplateError, ArithmeticError, TypeError, ValueError):
        return None


if __name__ == "__main__":
    main()
