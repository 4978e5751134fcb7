"""Serve abuse: slow verifies cannot queue a normal one behind them, grader processes have a memory cap,
and bad encodings, huge numbers and a context-filling prompt are 400s, never 500s. The deployments' classes
are called directly (no Ray Serve, no engine): the ingress's request parsing on real Starlette requests,
the verifier's methods from threads as Serve's replica would."""

import asyncio
import inspect
import json
import threading
import time
from types import SimpleNamespace

import pytest

from serve.config import ServeArgs

SLOW = "\\boxed{9^{9^{9^{9}}}}"  # math-verify tries to evaluate it: a comparison times out


def call(result):
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def test_slow_verifies_do_not_block_a_normal_one():
    """5 pathological /v1/verify requests (distinct golds: no verdict cache hits; each comparison times out
    at 2 s) and then a normal one, on a replica with 6 graders: the normal one is answered, correctly, in
    well under one comparison timeout (it used to wait behind all 5 in one lock per replica: 12.3 s here,
    27.9 s with the 5 s default). With more slow requests than graders, see the budget test below."""
    from serve.verifier import Verifier

    verifier = Verifier.func_or_class(2.0, 6)
    slow = [threading.Thread(target=lambda gold=str(10 + i): call(verifier.verify(SLOW, gold))) for i in range(5)]
    for t in slow:
        t.start()
    time.sleep(0.5)
    start = time.monotonic()
    verdict = call(verifier.verify("so \\boxed{\\frac{1}{2}}", "0.5"))
    latency = time.monotonic() - start
    for t in slow:
        t.join()
    assert verdict["status"] == "correct"
    assert latency < 1.5, f"a normal verify waited {latency:.1f} s behind slow ones"


def test_pool_time_budget_and_memory_cap():
    """With its only grader busy, a request waits at most its budget and gets 'timeout' verdicts; the
    grader child runs under RLIMIT_AS = memory_limit_mb (it had no cap: 611 MB within 5 s)."""
    from lib.grading import GraderPool

    pool = GraderPool(1, timeout=3.0, memory_limit_mb=512)
    try:
        assert pool.grade("\\boxed{2}", "2", budget_s=30).status == "correct"
        pid = pool.graders[0]._process.pid
        limits = [line for line in open(f"/proc/{pid}/limits") if line.startswith("Max address space")][0].split()
        assert limits[3:5] == [str(512 * 2**20)] * 2
        busy = threading.Thread(target=pool.grade, args=(SLOW, "7", 30))
        busy.start()
        time.sleep(0.3)
        start = time.monotonic()
        late = pool.grade_many([("\\boxed{3}", "3", None), ("\\boxed{4}", "4", None)], budget_s=1.0)
        waited = time.monotonic() - start
        busy.join()
        assert [v.status for v in late] == ["timeout", "timeout"] and 0.9 <= waited < 2.0
        assert pool.grade("\\boxed{5}", "5", budget_s=30).status == "correct"  # the grader came back
    finally:
        pool.close()


# --------------------------------------------------------------------------------------------- 400, not 500


def starlette_request(body: bytes, key: str = "k"):
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent = {"done": False}

    async def receive():
        if sent["done"]:
            return {"type": "http.disconnect"}
        sent["done"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def ingress_parse(body: bytes, model_cls_name: str = "ChatRequest"):
    import serve.openai_api as api
    from serve.app import Ingress

    args = ServeArgs(api_keys_env=None, allow_no_auth=True)
    fake = SimpleNamespace(keys={"k"}, limits=args.limits, args=args)
    parsed, err = asyncio.run(Ingress.func_or_class.parse(fake, starlette_request(body), getattr(api, model_cls_name)))
    return parsed, err


def chat(**extra) -> dict:
    return {"model": "mathray", "messages": [{"role": "user", "content": "What is 2+2?"}], **extra}


@pytest.mark.parametrize("body, message", [
    (b'{"model": "mathray", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "not valid UTF-8"),
    (json.dumps(chat(messages=[{"role": "user", "content": "\ud800"}])).encode(), "lone surrogate"),
    (json.dumps(chat(seed=2**70)).encode(), "seed must be a 64-bit integer"),
    (json.dumps(chat(seed=-(2**63) - 1)).encode(), "seed must be a 64-bit integer"),
])
def test_bad_encodings_and_huge_numbers_are_400s(body, message):
    """Each of these was a 500 (an exception past the ingress's checks)."""
    parsed, err = ingress_parse(body)
    assert parsed is None and err.status_code == 400
    assert message in json.loads(err.body)["error"]["message"]


def test_a_valid_request_still_parses():
    parsed, err = ingress_parse(json.dumps(chat(seed=2**63 - 1, n=2)).encode())
    assert err is None and parsed.seed == 2**63 - 1 and parsed.n == 2


def test_prompt_filling_the_context_without_max_tokens_is_a_400():
    """A prompt of exactly max_model_len tokens and no max_tokens left max_tokens=0 for the engine (a 500)."""
    pytest.importorskip("vllm")
    from serve.model import ModelServer

    args = ServeArgs(api_keys_env=None, allow_no_auth=True, limits={"max_prompt_tokens": 64})
    fake = SimpleNamespace(args=args, max_model_len=32, stop_strings=lambda request: None)
    params, err = ModelServer.func_or_class.sampling_params(fake, {"messages": []}, list(range(32)))
    assert params is None and err["error"]["status"] == 400 and "no room left" in err["error"]["message"]
    params, err = ModelServer.func_or_class.sampling_params(fake, {"messages": []}, list(range(31)))
    assert err is None and params.max_tokens == 1
