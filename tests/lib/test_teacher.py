"""The teacher client against a loopback fault-injecting server: retries, Retry-After, limiter, budget,
error accounting, the persistent cache, preflight errors. No Ray, no model: these run in seconds."""

import asyncio

import pytest

from lib.teacher import (
    BUDGET_EXHAUSTED,
    Governor,
    Pricing,
    RequestCache,
    TeacherClient,
    TeacherError,
    TeacherSettings,
    TokenBucket,
    preflight,
)
from tests.fake_teacher import FakeTeacher

TEN_WORDS = "one two three four five six seven eight nine ten"


def settings(teacher, **kw):
    return TeacherSettings(base_url=teacher.base_url, model=teacher.model, backoff_base_s=0.5, **kw)


class Sleeps:
    """Records the client's sleeps instead of sleeping (the tests assert the exact waits)."""

    def __init__(self):
        self.calls = []

    async def __call__(self, seconds):
        self.calls.append(seconds)


def ask(client, n=1, stage="chat"):
    async def go():
        try:
            return await asyncio.gather(*[client.complete([{"role": "user", "content": f"question {i}"}], sample_index=i,
                                                          stage=stage) for i in range(n)])
        finally:
            await client.close()

    return asyncio.run(go())


def test_429_waits_exactly_retry_after_then_succeeds():
    """A 429 with Retry-After: 2 makes the client wait 2 s (not its own backoff) and retry once."""
    with FakeTeacher(faults=["429:2"]) as teacher:
        sleeps = Sleeps()
        (c,) = ask(TeacherClient(settings(teacher), sleep=sleeps))
    assert c.ok and c.attempts == 2 and c.errors == ["429"]
    assert sleeps.calls == [2.0]
    assert len(teacher.log) == 2


def test_500s_are_retried_with_jittered_exponential_backoff():
    """Two 500s, then success: 3 attempts, waits within [0, 0.5] and [0, 1.0] (full jitter, base 0.5 s)."""
    with FakeTeacher(faults=["500", "500"]) as teacher:
        sleeps = Sleeps()
        (c,) = ask(TeacherClient(settings(teacher), sleep=sleeps))
    assert c.ok and c.attempts == 3 and c.errors == ["500", "500"]
    assert len(sleeps.calls) == 2 and 0 <= sleeps.calls[0] <= 0.5 and 0 <= sleeps.calls[1] <= 1.0


def test_malformed_and_empty_responses_are_retried():
    """A 200 whose body is not JSON, then one with no choices, then a good answer."""
    with FakeTeacher(faults=["malformed", "empty"]) as teacher:
        (c,) = ask(TeacherClient(settings(teacher), sleep=Sleeps()))
    assert c.ok and c.attempts == 3 and c.errors == ["malformed", "malformed"]
    assert c.text == "I do not understand."


def test_slow_response_times_out_and_is_retried():
    with FakeTeacher(faults=["slow:3"]) as teacher:
        (c,) = ask(TeacherClient(settings(teacher, timeout_s=0.5), sleep=Sleeps()))
    assert c.ok and c.attempts == 2 and c.errors == ["timeout"]


def test_a_request_that_keeps_failing_is_recorded_not_raised():
    """After max_attempts the completion carries the error; nothing raises; every attempt was sent."""
    with FakeTeacher(fault_fn=lambda n, body: "500") as teacher:
        client = TeacherClient(settings(teacher, max_attempts=3), sleep=Sleeps())
        results = ask(client, n=2)
    assert [r.ok for r in results] == [False, False]
    assert all(r.attempts == 3 and r.error.startswith("500") and r.errors == ["500"] * 3 for r in results)
    assert len(teacher.log) == 6 and client.sent == 6


def test_client_errors_other_than_429_are_not_retried():
    with FakeTeacher(faults=["400"]) as teacher:
        (c,) = ask(TeacherClient(settings(teacher), sleep=Sleeps()))
    assert not c.ok and c.attempts == 1 and c.error.startswith("400")
    assert len(teacher.log) == 1


def test_cache_second_run_sends_zero_requests(tmp_path):
    """Responses that succeeded are served from the SQLite cache by a new client; other params miss it."""
    cache_path = tmp_path / "cache.sqlite"
    with FakeTeacher(faults=[None, "500"]) as teacher:
        first = ask(TeacherClient(settings(teacher), cache=RequestCache(cache_path), sleep=Sleeps()), n=5)
        sent_first = len(teacher.log)
        second = ask(TeacherClient(settings(teacher), cache=RequestCache(cache_path), sleep=Sleeps()), n=5)
        assert len(teacher.log) == sent_first == 6  # 5 requests + 1 retry, then nothing
        other = ask(TeacherClient(settings(teacher, temperature=0.1), cache=RequestCache(cache_path)), n=5)
        assert len(teacher.log) == 11
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached and c.attempts == 0 for c in second) and not any(c.cached for c in first + other)
    assert len(RequestCache(cache_path)) == 10


def test_identical_requests_in_flight_together_are_sent_once(tmp_path):
    """Three identical requests at once (with and without a cache) send one; the two that waited come back
    as cached copies. A failure is shared too, and is not marked cached."""
    same = [{"role": "user", "content": "the same question"}]

    def three(client):
        async def go():
            try:
                return await asyncio.gather(*[client.complete(same, sample_index=7) for _ in range(3)])
            finally:
                await client.close()

        return asyncio.run(go())

    for cache in (None, RequestCache(tmp_path / "cache.sqlite")):
        with FakeTeacher() as teacher:
            client = TeacherClient(settings(teacher), cache=cache, sleep=Sleeps())
            results = three(client)
        assert len(teacher.log) == 1 and client.sent == 1 and not client._inflight
        assert [r.cached for r in results] == [False, True, True] and [r.attempts for r in results] == [1, 0, 0]
        assert len({r.text for r in results}) == 1 and results[0].text
    with FakeTeacher(faults=["400"]) as teacher:
        results = three(TeacherClient(settings(teacher), sleep=Sleeps()))
    assert len(teacher.log) == 1 and [(r.ok, r.cached) for r in results] == [(False, False)] * 3


def test_budget_is_never_exceeded_and_refusals_send_nothing():
    """Each answer costs exactly $0.25 (10 tokens x $25,000/Mtok); the worst case reserved is $2.50
    (max_tokens 100). With a $10 budget a request is allowed while spent <= $7.50: 31 are sent, the rest
    are refused without an HTTP request, and the ledger ends at $7.75."""
    pricing = Pricing(prompt_usd_per_mtok=0, completion_usd_per_mtok=25_000)
    governor = Governor(budget_usd=10.0)
    with FakeTeacher(responder=lambda messages, seed: TEN_WORDS) as teacher:
        client = TeacherClient(settings(teacher, pricing=pricing, max_tokens=100, max_concurrency=1), governor=governor)

        async def sequential():
            out = [await client.complete([{"role": "user", "content": "q"}], sample_index=i) for i in range(40)]
            await client.close()
            return out

        results = asyncio.run(sequential())
    assert [r.ok for r in results] == [True] * 31 + [False] * 9
    assert all(r.error == BUDGET_EXHAUSTED and r.attempts == 0 for r in results[31:])
    assert len(teacher.log) == 31
    ledger = governor.snapshot()
    assert ledger["spent"] == 7.75 and ledger["reserved"] == 0 and ledger["refused"] == 9
    assert ledger["completion_tokens"] == 310


def test_token_bucket_delays_are_exact():
    """60 requests/min with a burst of 1: the first goes now, then one per second; idle time refills."""
    now = [0.0]
    bucket = TokenBucket(60, burst=1, clock=lambda: now[0])
    assert [bucket.reserve(1) for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    now[0] = 10.0
    assert bucket.reserve(1) == 0.0 and bucket.reserve(1) == 1.0


def test_governor_applies_request_and_token_limits_through_the_client():
    """600 requests/min (burst 10/s) and a frozen clock: the client is told to wait 0.1 s more per request
    beyond the burst, and it sleeps exactly that before sending."""
    governor = Governor(requests_per_minute=600, clock=lambda: 0.0)
    with FakeTeacher() as teacher:
        sleeps = Sleeps()
        client = TeacherClient(settings(teacher, max_concurrency=1), governor=governor, sleep=sleeps)

        async def sequential():
            for i in range(13):
                await client.complete([{"role": "user", "content": "q"}], sample_index=i)
            await client.close()

        asyncio.run(sequential())
    assert sleeps.calls == pytest.approx([0.1, 0.2, 0.3])  # requests 11..13 exceed the 10-request burst
    assert len(teacher.log) == 13
    tokens = Governor(tokens_per_minute=6000, clock=lambda: 0.0)  # 100 tokens/s, burst 500
    assert [tokens.acquire(250, 0.0) for _ in range(3)] == [0.0, 0.0, 2.5]  # 250 tokens short at 100/s


def test_preflight_names_the_problem(monkeypatch):
    """A wrong key, an unknown model and an unreachable server fail before any work, saying which."""
    monkeypatch.setenv("FAKE_KEY", "wrong")
    with FakeTeacher(api_key="right") as teacher:
        with pytest.raises(TeacherError, match=r"authentication failed \(check \$FAKE_KEY\)"):
            asyncio.run(preflight(settings(teacher, api_key_env="FAKE_KEY")))
        monkeypatch.setenv("FAKE_KEY", "right")
        assert asyncio.run(preflight(settings(teacher, api_key_env="FAKE_KEY"))) == ["fake-teacher"]
        with pytest.raises(TeacherError, match="'gpt-5' is not served"):
            asyncio.run(preflight(TeacherSettings(base_url=teacher.base_url, model="gpt-5", api_key_env="FAKE_KEY")))
        url = teacher.base_url
    with pytest.raises(TeacherError, match="cannot connect"):
        asyncio.run(preflight(TeacherSettings(base_url=url, model="x")))


def test_missing_api_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(TeacherError, match="environment variable NO_SUCH_KEY is not set"):
        TeacherSettings(base_url="https://api.openai.com/v1", api_key_env="NO_SUCH_KEY").api_key()
