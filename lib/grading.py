"""Grading: response text -> extracted answer -> equivalence with the gold answer.

Pipeline: :func:`lib.extraction.extract_answer` (whole text) -> :func:`normalize_answer` (pure
string rules, in the calling process) -> a comparison in a killable child process that runs
``math_verify.parse`` / ``math_verify.verify(gold, prediction)`` (gold FIRST: the function is not
symmetric). A :class:`Grader` owns that child process: comparisons that exceed the timeout kill it
(it is restarted lazily on the next comparison) and get status ``"timeout"``. math-verify's own
``signal.alarm`` timeouts are switched off in the child, so the parent's timeout is the only one; it
works from any thread of the caller (``signal.alarm`` works only in the main thread).

Policy (all recorded by :func:`settings`):

- Numeric tolerance: when at least one side contains a decimal number, two numbers are equal iff
  ``|pred - gold| <= max(1e-6, 1e-12 * |gold|)``: absolute 1e-6, i.e. agreement to 6 decimal
  places like math-verify's own ``float_rounding=6`` rule (which is also applied); the 1e-12
  relative term only absorbs float representation error of huge values. No relative tolerance
  beyond that: ``1234567.4`` is not ``1234567``. Without decimals the comparison is exact
  (symbolic; evaluated differences at ``numeric_precision=15`` digits). So ``2\\pi`` vs ``6.28``
  is incorrect, ``0.333333`` vs ``\\frac13`` and ``6.283185`` vs ``2\\pi`` correct.
- GSM8K forms: thousands commas (``1,000``, only when the whole answer is one number), ``$``/``\\$``,
  units after a number (``5 apples``, ``5\\text{ cm}``), degrees (``30^\\circ``), leading zeros
  (``016`` == 16) are normalized away.
- Percent: the sign is dropped on both sides, so ``5\\%`` == ``5`` but ``5\\%`` != ``0.05``.
- Text answers (a word of 2+ letters, e.g. ``Evelyn``, ``\\text{no solution}``) are compared as
  normalized strings (case, spaces, ``\\text{}`` ignored); single letters (choices ``(C)``) go
  through math-verify.
- Simplified form: a prediction containing ``\\sqrt{n}`` with ``n`` a perfect square (``\\sqrt{169}``)
  is incorrect unless the gold answer contains the same radical (MATH asks for simplified answers;
  sympy would silently turn it into 13). Other unsimplified radicals (``\\sqrt{12}`` for
  ``2\\sqrt{3}``) are accepted by value.
- An empty gold answer is an ``"error"``; a gold answer that math-verify cannot parse and that is
  not text is an ``"error"`` too, never ``"correct"``. A prediction longer than
  ``MAX_ANSWER_CHARS`` is ``"incorrect"`` without comparison.

Results (timeouts included: the same answer would time out again) are cached per
(question, normalized answer). The worker is started with ``spawn`` (never ``fork``: the caller may
be a threaded Ray worker), so, as for any spawn, the caller's ``__main__`` must be import-safe.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import queue
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from lib.extraction import extract_answer, last_boxed

logger = logging.getLogger(__name__)

try:
    MATH_VERIFY_VERSION = version("math-verify")
except PackageNotFoundError:  # pragma: no cover - math-verify is a hard dependency
    MATH_VERIFY_VERSION = "unknown"

GRADER_VERSION = f"mathray-grader-1+math-verify-{MATH_VERIFY_VERSION}"
DEFAULT_TIMEOUT_S = 5.0
STATUSES = ("correct", "incorrect", "no_answer", "timeout", "error", "ungraded")  # ungraded: an answer, no gold
FLOAT_ROUNDING = 6
NUMERIC_PRECISION = 15
RELATIVE_TOLERANCE = 1e-12
ABSOLUTE_TOLERANCE = 1e-6
MAX_ANSWER_CHARS = 1000
WORKER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Verdict:
    """The grade of one response; ``canonical`` groups equal answers for majority voting."""

    status: str
    extracted: str | None
    method: str
    canonical: str | None
    error: str | None = None


def settings(timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The grading settings to record in every output file."""
    return {
        "grader_version": GRADER_VERSION,
        "math_verify_version": MATH_VERIFY_VERSION,
        "float_rounding": FLOAT_ROUNDING,
        "numeric_precision": NUMERIC_PRECISION,
        "relative_tolerance": RELATIVE_TOLERANCE,
        "absolute_tolerance": ABSOLUTE_TOLERANCE,
        "timeout_s": float(timeout),
        "max_answer_chars": MAX_ANSWER_CHARS,
        "comparison": "math_verify.verify(gold, prediction): gold first; strict=True",
        "percent": "sign dropped on both sides: 5\\% == 5, 5\\% != 0.05",
        "radicals": "\\sqrt{perfect square} in the prediction is incorrect (not simplified)",
    }


# ---------------------------------------------------------------- normalization (parent process)

_TEXT_CMD = r"\\(?:text|textbf|textit|textrm|textsf|mathrm|mbox)\s*"
_WHOLE_TEXT = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")
_UNIT_TEXT = re.compile(r"(?<=[\d}])\s*" + _TEXT_CMD + r"\{\s*[A-Za-z][A-Za-z\s.]*\}(?:\^\{?\d\}?)?$")
_UNIT_WORDS = re.compile(r"(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s*[A-Za-z]{2,}(?:\s+[A-Za-z]+)*(?:\^\d)?(?:/[A-Za-z]+)?\.?")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![a-zA-Z])")
_BARE_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")
_TEXT_ANSWER = re.compile(r"[A-Za-z][A-Za-z\s'.,\-]*")
_SQRT_INT = re.compile(r"\\sqrt\s*(?:\{\s*(\d+)\s*\}|(\d))|(?<![\\A-Za-z])sqrt\s*\(\s*(\d+)\s*\)")


def _strip_delimiters(s: str) -> str:
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s


def normalize_answer(answer: str | None) -> str:
    """Normalize one already-extracted answer (prediction or gold) to the string that is compared.

    Pure string rules; the comparison itself is left to math-verify. Returns "" for no answer.
    """
    if not answer:
        return ""
    s = str(answer).replace("\u2212", "-").strip()  # unicode minus
    if "####" in s:
        s = s.rsplit("####", 1)[1].strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = last_boxed(s) or s
    s = _strip_delimiters(s.strip())
    s = re.sub(r"\\[,;:!](?![a-zA-Z])", "", s).replace("\\ ", " ").replace("{,}", ",")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"(?<=[\w)])\*\*(?=[\w(])", "^", s.strip("*").strip())
    s = _UNIT_TEXT.sub("", s.strip())
    whole_text = _WHOLE_TEXT.fullmatch(s.strip())
    if whole_text:
        s = whole_text.group(1)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    choice = re.fullmatch(r"\(([A-Za-z])\)", s)
    if choice:
        s = choice.group(1)
    unit_words = _UNIT_WORDS.fullmatch(s)
    if unit_words:
        s = unit_words.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    scientific = _SCIENTIFIC.fullmatch(s)
    if scientific:
        s = f"{scientific.group(1)}\\times 10^{{{int(scientific.group(2))}}}"
    return _BARE_PI.sub(r"\\pi", s)


def _is_text(s: str) -> bool:
    """True for word answers ("Evelyn", "no solution"), compared as strings."""
    return bool(_TEXT_ANSWER.fullmatch(s)) and re.search(r"[A-Za-z]{2,}", s) is not None


def _text_key(s: str) -> str:
    s = re.sub(_TEXT_CMD + r"\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+", "", s).lower().strip(".")


def _unsimplified_radical(pred: str, gold: str) -> bool:
    """True when ``pred`` has ``\\sqrt{n}`` for a perfect square n that ``gold`` does not have."""
    for match in _SQRT_INT.finditer(pred):
        n = int(next(g for g in match.groups() if g is not None))
        if math.isqrt(n) ** 2 == n and match.group(0) not in gold:
            return True
    return False


# ---------------------------------------------------------------- comparison (child process)


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> list[Any]:
    """math-verify parse of a normalized answer: sympy objects only, no string fallback."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    for wrapped in (f"\\boxed{{{answer}}}", f"${answer}$"):
        parsed = parse(wrapped, extraction_config=config, fallback_mode="no_fallback", parsing_timeout=None)
        if parsed:
            return parsed
    return []


def _numeric_close(gold: Any, pred: Any) -> bool:
    """Tolerance rule of the module docstring; only when a decimal appears on either side."""
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return False
    if not (gold.atoms(sympy.Float) or pred.atoms(sympy.Float)) or not (gold.is_number and pred.is_number):
        return False
    try:
        g, p = complex(gold.evalf(NUMERIC_PRECISION)), complex(pred.evalf(NUMERIC_PRECISION))
    except (TypeError, ValueError, OverflowError):
        return False
    return abs(p - g) <= max(ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE * abs(g))


def _canonical(expr: Any) -> str | None:
    """A string for majority-vote grouping: x=5 -> 5; decimals rounded to 6 places and made exact."""
    import sympy

    try:
        if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
            expr = expr.rhs
        if isinstance(expr, sympy.Basic):
            floats = expr.atoms(sympy.Float)
            if floats:
                expr = expr.xreplace({f: sympy.Rational(repr(round(float(f), FLOAT_ROUNDING))) for f in floats})
        return str(expr)
    except Exception:  # noqa: BLE001 - inf/nan floats and the like: the caller falls back to text
        return None


def compare_normalized(pred: str, gold: str) -> tuple[str, str | None, str | None]:
    """(status, canonical, error) for two normalized answers, with math-verify; runs in the child."""
    from math_verify import verify

    gold_parsed = _parse(gold)
    if not gold_parsed:
        return "error", None, "gold answer could not be parsed"
    pred_parsed = _parse(pred)
    if not pred_parsed:
        return "incorrect", None, None
    equal = verify(  # gold FIRST; no signal timeout (the parent kills this process instead)
        gold_parsed, pred_parsed, float_rounding=FLOAT_ROUNDING, numeric_precision=NUMERIC_PRECISION,
        strict=True, timeout_seconds=None,
    ) or _numeric_close(gold_parsed[0], pred_parsed[0])
    return ("correct" if equal else "incorrect"), _canonical(pred_parsed[0]), None


def _worker_main(conn: Any, memory_limit_mb: int | None = None) -> None:
    """Child process loop: receive (pred, gold), send ("ok", result) or ("error", message).

    ``memory_limit_mb`` caps the child's address space (``RLIMIT_AS``): a comparison that would grow past
    it gets a MemoryError (an ``"error"`` verdict) or ends the child, never the machine's memory."""
    if memory_limit_mb is not None:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (pay the import before "ready")

    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", compare_normalized(*request)))
        except Exception as exc:  # noqa: BLE001 - a grader never raises on model output
            conn.send(("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


def _stop_worker(process: Any, conn: Any) -> None:
    conn.close()
    process.kill()
    process.join(timeout=5)


# ---------------------------------------------------------------- Grader (parent process)


class Grader:
    """Owns one killable worker process + a verdict cache. Use as a context manager or call close()."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, cache_size: int = 1_000_000, memory_limit_mb: int | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.timeout = float(timeout)
        self.memory_limit_mb = memory_limit_mb
        self.cache_size = cache_size
        self.stats: dict[str, int] = {"comparisons": 0, "cache_hits": 0, "timeouts": 0, "restarts": 0, "errors": 0}
        self._cache: OrderedDict[tuple[str, str], tuple[str, str | None, str | None]] = OrderedDict()
        self._lock = threading.RLock()
        self._process: Any = None
        self._conn: Any = None
        self._finalizer: weakref.finalize | None = None
        self._num_starts = 0

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def grade(self, response: str, gold: str, cache_key: str | None = None) -> Verdict:
        """Extract the answer from ``response`` and compare it with ``gold``; never raises. Without a gold answer
        (None or blank: the source has none) an extracted answer is ``ungraded``, never ``correct``."""
        try:
            extracted = extract_answer(response)
        except Exception as exc:  # noqa: BLE001
            return Verdict("error", None, "none", None, f"extraction failed: {type(exc).__name__}")
        if gold is None or not str(gold).strip():  # the source has no gold answer (e.g. hungarian_exam)
            if extracted.answer is None:
                return Verdict("no_answer", None, extracted.method, None)
            return Verdict("ungraded", extracted.answer, extracted.method, normalize_answer(extracted.answer))
        gold_norm = normalize_answer(gold)
        if not gold_norm:
            return Verdict("error", extracted.answer, extracted.method, None, "gold answer is empty")
        if extracted.answer is None:
            return Verdict("no_answer", None, extracted.method, None)
        status, canonical, error = self._compare(normalize_answer(extracted.answer), gold_norm, cache_key)
        return Verdict(status, extracted.answer, extracted.method, canonical, error)

    def grade_many(self, items: list[tuple[str, str, str | None]]) -> list[Verdict]:
        """Grade (response, gold, cache_key) triples in order."""
        return [self.grade(response, gold, key) for response, gold, key in items]

    def is_equivalent(self, pred: str, gold: str) -> bool:
        """True iff the already-extracted answers are equal; False on timeout or error."""
        gold_norm, pred_norm = normalize_answer(gold), normalize_answer(pred)
        if not gold_norm or not pred_norm:
            return False
        return self._compare(pred_norm, gold_norm, None)[0] == "correct"

    def close(self) -> None:
        """Stop the worker process (a later comparison starts a new one)."""
        with self._lock:
            self._discard_worker()

    def _compare(self, pred: str, gold: str, cache_key: str | None) -> tuple[str, str | None, str | None]:
        key = (gold if cache_key is None else cache_key, pred)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self.stats["cache_hits"] += 1
                self._cache.move_to_end(key)
                return cached
            self.stats["comparisons"] += 1
            result = self._compare_uncached(pred, gold)
            if result[0] == "error":
                self.stats["errors"] += 1
            self._cache[key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return result

    def _compare_uncached(self, pred: str, gold: str) -> tuple[str, str | None, str | None]:
        if len(pred) > MAX_ANSWER_CHARS:
            return "incorrect", _text_key(pred[:MAX_ANSWER_CHARS]), None
        if _is_text(pred) or _is_text(gold):
            key = _text_key(pred)
            return ("correct" if key == _text_key(gold) else "incorrect"), key, None
        if _unsimplified_radical(pred, gold):
            return "incorrect", _text_key(pred), None
        status, canonical, error = self._ask_worker(pred, gold)
        return status, canonical if canonical is not None else _text_key(pred), error

    def _ask_worker(self, pred: str, gold: str) -> tuple[str, str | None, str | None]:
        try:
            self._ensure_worker()
            self._conn.send((pred, gold))
            ready = self._conn.poll(self.timeout)
        except Exception as exc:  # noqa: BLE001 - start failure, broken pipe
            self._discard_worker()
            return "error", None, f"grader worker failed: {type(exc).__name__}: {exc}"
        if not ready:
            logger.warning("grading comparison exceeded %.1fs; restarting the worker", self.timeout)
            self.stats["timeouts"] += 1
            self._discard_worker()
            return "timeout", None, f"comparison exceeded {self.timeout:g}s"
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._discard_worker()
            return "error", None, f"grader worker died: {type(exc).__name__}"
        if kind == "ok":
            return payload
        return "error", None, str(payload)

    def _ensure_worker(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._discard_worker()
        context = multiprocessing.get_context("spawn")  # never fork: the caller may be a threaded Ray worker
        parent_conn, child_conn = context.Pipe()
        process = context.Process(target=_worker_main, args=(child_conn, self.memory_limit_mb), daemon=True,
                                  name="mathray-grader")
        process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        self._finalizer = weakref.finalize(self, _stop_worker, process, parent_conn)
        if self._num_starts > 0:
            self.stats["restarts"] += 1
        self._num_starts += 1
        if not parent_conn.poll(WORKER_START_TIMEOUT_S) or parent_conn.recv()[0] != "ready":
            raise RuntimeError(f"grader worker did not start within {WORKER_START_TIMEOUT_S:g}s")

    def _discard_worker(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._process = self._conn = self._finalizer = None


class GraderPool:
    """``size`` :class:`Grader` s (one child process each) shared by concurrent callers (threads): a call takes
    a free grader for its whole request, so a slow comparison occupies one grader, never all of them. Each
    call has a time budget: it waits at most that long for a free grader, and comparisons it has not
    started when the budget runs out get status ``"timeout"`` without running. A request therefore takes
    at most ``budget_s`` plus one comparison's ``timeout``."""

    def __init__(self, size: int, timeout: float = DEFAULT_TIMEOUT_S, memory_limit_mb: int | None = None,
                 warm: bool = False):
        """``warm``: start every grader's process now (in parallel), so no request pays for a start."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.graders = [Grader(timeout=timeout, memory_limit_mb=memory_limit_mb) for _ in range(size)]
        self._free: queue.Queue[Grader] = queue.Queue()
        for grader in self.graders:
            self._free.put(grader)
        if warm:
            starts = [threading.Thread(target=grader.is_equivalent, args=("1", "1")) for grader in self.graders]
            for thread in starts:
                thread.start()
            for thread in starts:
                thread.join()

    def _run(self, budget_s: float, work: Callable[[Grader, float], Any], busy: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + budget_s
        try:
            grader = self._free.get(timeout=budget_s)
        except queue.Empty:
            return busy()
        try:
            return work(grader, deadline)
        finally:
            self._free.put(grader)

    def grade_many(self, items: list[tuple[str, str, str | None]], budget_s: float) -> list[Verdict]:
        """Verdicts for (response, gold, cache_key) triples within ``budget_s``; never raises."""
        late = Verdict("timeout", None, "none", None, f"grading budget of {budget_s:g}s spent")

        def work(grader: Grader, deadline: float) -> list[Verdict]:
            return [grader.grade(*item) if time.monotonic() < deadline else late for item in items]

        return self._run(budget_s, work, lambda: [late] * len(items))

    def grade(self, response: str, gold: str, budget_s: float) -> Verdict:
        return self.grade_many([(response, gold, None)], budget_s)[0]

    def equivalence(self, budget_s: float, run: Callable[[Callable[[str, str], bool]], Any], busy: Callable[[], Any]) -> Any:
        """``run(is_equivalent)`` with one grader; comparisons after the budget count as not equivalent."""

        def work(grader: Grader, deadline: float) -> Any:
            return run(lambda a, b: time.monotonic() < deadline and grader.is_equivalent(a, b))

        return self._run(budget_s, work, busy)

    def close(self) -> None:
        for grader in self.graders:
            grader.close()


_default_graders: dict[float, Grader] = {}
_default_lock = threading.Lock()


def _default_grader(timeout: float) -> Grader:
    with _default_lock:
        if timeout not in _default_graders:
            _default_graders[timeout] = Grader(timeout=timeout)
        return _default_graders[timeout]


def is_equivalent(pred: str, gold: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Two already-extracted answers are equal (process-wide default :class:`Grader`)."""
    return _default_grader(timeout).is_equivalent(pred, gold)


def grade(response: str, gold: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Grade a full response text against ``gold`` (process-wide default :class:`Grader`)."""
    return _default_grader(timeout).grade(response, gold)
