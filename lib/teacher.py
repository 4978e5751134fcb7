"""The teacher client: an OpenAI-compatible chat API called at scale without losing a row or a dollar.

:class:`TeacherClient` wraps the ``openai`` package's async client and adds what a million-request job
needs and the SDK does not give:

- **limits across the job**: a :class:`Governor` (token buckets on requests/min and tokens/min, and a
  budget) is asked before every request; in a Ray job one governor lives in an actor and every client
  asks it, so the limits hold for the whole job, not per process;
- **retries** with exponential backoff and full jitter on 429 (honouring ``Retry-After``), 5xx,
  timeouts, connection errors and malformed responses; 4xx other than 408/409/429 are not retried;
- **a persistent cache** (:class:`RequestCache`, SQLite) keyed by (model, messages, params, sample
  index): a rerun or a resumed run sends no request that already succeeded;
- **a cost ledger**: prompt/completion tokens x configured prices; the budget is reserved before a
  request at its worst case (``max_tokens`` completion), so it is never exceeded.

A call never raises for an API or model failure: it returns a :class:`Completion` whose ``error`` says
what went wrong after the last attempt. Bad configuration (no API key, unreachable server) is caught by
:func:`preflight` before work starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from lib.config import StrictModel

log = logging.getLogger("mathray.teacher")

BUDGET_EXHAUSTED = "budget_exhausted"
CACHE_UNWRITABLE = "cache_unwritable"
RETRYABLE_STATUS = {408, 409, 429}


class TeacherError(RuntimeError):
    """The teacher endpoint cannot be used at all (bad key, unreachable, unknown model): fail before work."""


class Pricing(StrictModel):
    """US dollars per million tokens (GPT-4 Turbo: 10 prompt, 30 completion)."""

    prompt_usd_per_mtok: float = Field(0.0, ge=0)
    completion_usd_per_mtok: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_usd_per_mtok + completion_tokens * self.completion_usd_per_mtok) / 1e6


class TeacherSettings(StrictModel):
    """Where the teacher is and how to call it. The API key is read from the env var ``api_key_env``."""

    base_url: str | None = Field(None, description="None: the OpenAI API; else e.g. http://127.0.0.1:8000/v1")
    model: str = "gpt-4-turbo"
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the key (never the key)")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    send_seed: bool = Field(True, description="send a per-sample seed (OpenAI and vLLM honour it)")
    timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_concurrency: int = Field(32, ge=1, description="requests in flight per client (per actor)")
    requests_per_minute: float | None = Field(None, gt=0, description="across the whole job")
    tokens_per_minute: float | None = Field(None, gt=0, description="across the whole job (prompt + max completion)")
    pricing: Pricing = Field(default_factory=Pricing)

    def api_key(self, key: str | None = None) -> str:
        """The key: ``key`` when given (handed over by the driver), else the env var ``api_key_env``."""
        key = key or os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url and any(h in self.base_url for h in ("127.0.0.1", "localhost")):
            return "EMPTY"  # local servers without auth accept any key
        raise TeacherError(f"teacher.api_key_env: environment variable {self.api_key_env} is not set")


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A rough prompt size (4 characters per token, plus per-message overhead) for limits and budget."""
    return sum(len(m.get("content") or "") // 4 + 4 for m in messages)


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], sample_index: int) -> str:
    """The cache key: a hash of everything that determines the response."""
    blob = json.dumps([model, messages, params, sample_index], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- limits


class TokenBucket:
    """A token bucket refilled at ``rate_per_min``, holding at most ``burst``. ``reserve`` takes ``amount``
    now (the level may go negative) and returns how long the caller must wait before using it, so that
    reservations are served in order and the long-run rate never exceeds the limit."""

    def __init__(self, rate_per_min: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.rate = rate_per_min / 60.0
        self.burst = burst if burst is not None else max(rate_per_min / 60.0, 1.0)
        self.clock = clock
        self.level = self.burst
        self.updated = clock()

    def reserve(self, amount: float) -> float:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        self.level -= min(amount, self.burst)  # one request larger than the burst waits for a full bucket
        return 0.0 if self.level >= 0 else -self.level / self.rate


@dataclass
class Ledger:
    """Dollars spent (``spent``: settled; ``reserved``: in flight, at their worst case) against a budget."""

    budget_usd: float | None = None
    spent: float = 0.0
    reserved: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    refused: int = 0

    def reserve(self, worst_case_usd: float) -> bool:
        if self.budget_usd is not None and self.spent + self.reserved + worst_case_usd > self.budget_usd:
            self.refused += 1
            return False
        self.reserved += worst_case_usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.reserved -= reserved_usd
        self.spent += actual_usd
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.requests += 1


class Governor:
    """Rate limits and budget for every client of a job (wrap it in one Ray actor to share it).

    ``acquire`` returns the seconds to wait before sending, or ``None`` when the budget would be exceeded.
    ``already_spent`` counts dollars spent by earlier runs of the same output (their responses are cached),
    so a resumed run honours the same budget.
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 budget_usd: float | None = None, already_spent: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.requests = TokenBucket(requests_per_minute, clock=clock) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, burst=tokens_per_minute / 60 * 5, clock=clock) if tokens_per_minute else None
        self.ledger = Ledger(budget_usd=budget_usd, spent=already_spent)
        self.lock = threading.Lock()

    def acquire(self, tokens: int, worst_case_usd: float) -> float | None:
        with self.lock:
            if not self.ledger.reserve(worst_case_usd):
                return None
            delay = self.requests.reserve(1) if self.requests else 0.0
            if self.tokens:
                delay = max(delay, self.tokens.reserve(tokens))
            return delay

    def settle(self, reserved_usd: float, actual_usd: float, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            self.ledger.settle(reserved_usd, actual_usd, prompt_tokens, completion_tokens)

    def release(self, reserved_usd: float) -> None:
        """A request that failed for good: give its reservation back (failed requests are not billed)."""
        with self.lock:
            self.ledger.reserved -= reserved_usd

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return asdict(self.ledger)


# ----------------------------------------------------------------------------------------------- cache


class RequestCache:
    """Successful responses by request key, in one SQLite file. Failures are not cached.

    Journal mode DELETE (SQLite's rollback journal), not WAL: WAL needs a shared-memory file that every
    process maps, which NFS/EFS (where a cluster's ``output_dir`` usually lives) cannot provide, so a WAL
    cache there corrupts or fails to open. The rollback journal needs only POSIX file locks, which NFSv4
    and EFS support; many processes may read and write the file at once (writers wait, ``busy_timeout``).

    A response that was paid for but cannot be stored (disk full, read-only file) is appended to the
    spend journal ``<path>.spend.jsonl`` (best effort), so :meth:`total_cost` still counts it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.spend_journal = self.path.with_name(self.path.name + ".spend.jsonl")
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, stage TEXT, record TEXT, "
                       "cost REAL, created REAL)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA busy_timeout=60000")
        return db

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db().execute("SELECT record FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, stage: str, record: dict[str, Any]) -> None:
        self._db().execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                           (key, stage, json.dumps(record, ensure_ascii=False), record.get("cost", 0.0), time.time()))

    def keys(self) -> set[str]:
        return {k for (k,) in self._db().execute("SELECT key FROM responses")}

    def record_unstored(self, key: str, cost: float) -> None:
        """Append a paid response that :meth:`put` could not store to the spend journal (fsync'd)."""
        with open(self.spend_journal, "a") as handle:
            handle.write(json.dumps({"key": key, "cost": cost, "time": time.time()}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def total_cost(self) -> float:
        """Dollars paid for every stored response, plus those in the spend journal (paid, not stored)."""
        stored = float(self._db().execute("SELECT COALESCE(SUM(cost), 0) FROM responses").fetchone()[0])
        unstored = 0.0
        if self.spend_journal.exists():
            for line in self.spend_journal.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    unstored += float(json.loads(line)["cost"])
        return stored + unstored

    def __len__(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM responses").fetchone()[0])


# ---------------------------------------------------------------------------------------------- client


@dataclass
class Completion:
    """One teacher response (or the reason there is none)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    errors: list[str] = field(default_factory=list)  # every failed attempt, e.g. "429", "timeout", "malformed"

    @property
    def ok(self) -> bool:
        return self.error is None


def _classify(exc: BaseException) -> tuple[str, bool, float | None]:
    """(label, retryable, retry_after_s) for an exception raised by the openai client."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = None
        header = exc.response.headers.get("retry-after") if exc.response is not None else None
        if header:
            try:
                retry_after = float(header)
            except ValueError:
                retry_after = None
        return str(status), status >= 500 or status in RETRYABLE_STATUS, retry_after
    if isinstance(exc, (openai.APIResponseValidationError, ValueError, KeyError, IndexError, TypeError, AttributeError)):
        return "malformed", True, None
    return type(exc).__name__, True, None


class TeacherClient:
    """Async chat completions with limits, retries, cache and ledger. Use one per process / event loop.

    Identical requests (same key) share one: while one is in flight, the others wait for its answer and
    come back marked ``cached``, so a repeated request is never paid twice, however the two interleave.

    ``governor`` is a :class:`Governor` or anything with the same ``acquire``/``settle``/``release``
    methods returning awaitables or plain values (a Ray actor handle adapter, in a job). ``api_key`` (a
    ``pydantic.SecretStr``, so no log or repr shows it) overrides the env var ``settings.api_key_env``.
    """

    def __init__(self, settings: TeacherSettings, governor: Any | None = None, cache: RequestCache | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, seed: int = 0,
                 api_key: SecretStr | None = None):
        self.settings = settings
        self._api_key = api_key
        self.governor = governor if governor is not None else Governor()
        self.cache = cache
        self.sleep = sleep
        self.seed = seed
        self._client = None
        self._semaphore: asyncio.Semaphore | None = None
        self.sent = 0  # HTTP requests sent by this client (attempts, including failures)
        self.cache_error: str | None = None  # set when a paid response could not be cached: stop sending
        self._inflight: dict[str, asyncio.Future] = {}  # key -> the one request sent for it right now

    def _openai(self):
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.settings.base_url,
                api_key=self.settings.api_key(self._api_key.get_secret_value() if self._api_key else None),
                timeout=self.settings.timeout_s, max_retries=0)
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        return self._client

    def params(self, sample_index: int, max_tokens: int | None = None) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": max_tokens or s.max_tokens}
        if s.send_seed:
            params["seed"] = (self.seed * 1_000_003 + sample_index) % (2**31)
        return params

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        return random.uniform(0, min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt))

    @staticmethod
    async def _call(fn, *args):
        out = fn(*args)
        return await out if inspect.isawaitable(out) else out

    async def complete(self, messages: list[dict[str, str]], sample_index: int = 0, stage: str = "chat",
                       max_tokens: int | None = None) -> Completion:
        params = self.params(sample_index, max_tokens)
        key = request_key(self.settings.model, messages, params, sample_index)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return Completion(**{**hit, "cached": True, "attempts": 0})
        if (pending := self._inflight.get(key)) is not None:
            # The same request is in flight: wait for its answer rather than pay for it twice. Whether an
            # identical request is a cache hit must not depend on which of the two finished first.
            shared = await asyncio.shield(pending)
            return replace(shared, cached=shared.ok, attempts=0, errors=list(shared.errors))
        task = asyncio.ensure_future(self._send(key, messages, params, stage))
        self._inflight[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._inflight.pop(key, None)
            else:
                task.add_done_callback(lambda _t: self._inflight.pop(key, None))

    async def _send(self, key: str, messages: list[dict[str, str]], params: dict[str, Any], stage: str) -> Completion:
        client = self._openai()
        prompt_estimate = estimate_tokens(messages)
        worst_case = self.settings.pricing.cost(prompt_estimate, params["max_tokens"])
        result = Completion()
        for attempt in range(self.settings.max_attempts):
            if self.cache_error is not None:  # spend that cannot be recorded is not made
                result.error = f"{CACHE_UNWRITABLE}: {self.cache_error}"
                return result
            delay = await self._call(self.governor.acquire, prompt_estimate + params["max_tokens"], worst_case)
            if delay is None:
                result.error = BUDGET_EXHAUSTED
                return result
            if delay > 0:
                await self.sleep(delay)
            result.attempts += 1
            retry_after = None
            try:
                async with self._semaphore:
                    self.sent += 1
                    response = await client.chat.completions.create(model=self.settings.model, messages=messages, **params)
                if not getattr(response, "choices", None):
                    raise ValueError("response has no choices")
                choice = response.choices[0]
                text = choice.message.content
                if not isinstance(text, str):
                    raise ValueError("response has no message content")
                usage = response.usage
                prompt_tokens = usage.prompt_tokens if usage else prompt_estimate
                completion_tokens = usage.completion_tokens if usage else len(text) // 4
                cost = self.settings.pricing.cost(prompt_tokens, completion_tokens)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded, counted error
                label, retryable, retry_after = _classify(exc)
                await self._call(self.governor.release, worst_case)
                result.errors.append(label)
                result.error = f"{label}: {str(exc)[:300]}"
                if not retryable:
                    return result
            else:  # paid: settle once, keep the response, never retry it (even if the cache write fails)
                await self._call(self.governor.settle, worst_case, cost, prompt_tokens, completion_tokens)
                result.error = None  # earlier attempts' failures stay listed in result.errors
                result.text, result.finish_reason = text, choice.finish_reason
                result.prompt_tokens, result.completion_tokens, result.cost = prompt_tokens, completion_tokens, cost
                if self.cache is not None:
                    self._store(key, stage, result)
                return result
            if attempt + 1 < self.settings.max_attempts:
                await self.sleep(retry_after if retry_after is not None else self.backoff(attempt))
        return result

    def _store(self, key: str, stage: str, result: Completion) -> None:
        record = {k: v for k, v in asdict(result).items() if k not in ("cached", "attempts", "errors", "error")}
        try:
            self.cache.put(key, stage, record)
        except Exception as exc:  # noqa: BLE001 - disk full, read-only file, ...: stop paying for what is lost
            self.cache_error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("cannot write the request cache %s (%s): this client sends no more requests", self.cache.path,
                      self.cache_error)
            with contextlib.suppress(OSError):
                self.cache.record_unstored(key, result.cost)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def preflight(settings: TeacherSettings) -> list[str]:
    """Check before work starts that the endpoint answers and knows the model; return the served models.

    Raises :class:`TeacherError` with the URL and the server's reason (bad key, unreachable, unknown model).
    """
    import openai

    client = openai.AsyncOpenAI(base_url=settings.base_url, api_key=settings.api_key(), timeout=30, max_retries=2)
    where = settings.base_url or "the OpenAI API"
    try:
        models = [m.id async for m in client.models.list()]
    except openai.AuthenticationError as exc:
        raise TeacherError(f"teacher at {where}: authentication failed (check ${settings.api_key_env}): {exc}") from None
    except openai.APIConnectionError as exc:
        raise TeacherError(f"teacher at {where}: cannot connect: {exc}") from None
    except openai.APIStatusError as exc:
        raise TeacherError(f"teacher at {where}: /models returned {exc.status_code}: {exc}") from None
    finally:
        await client.close()
    if models and settings.model not in models:
        raise TeacherError(f"teacher.model: {settings.model!r} is not served at {where}; it serves {models[:10]}")
    return models
