"""The endpoint as `make serve` runs it (`python -m serve`, its own Ray) with the default model: the curl
example it prints, the OpenAI client (chat, completions, streaming, models), best-of-N traces, /v1/verify
verdicts, auth, limits, a bounded load test, the synthesis job using the endpoint as its teacher, and a clean
exit on SIGTERM. One server for the module (one engine start)."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from lib.data import load_dataset
from lib.grading import is_equivalent
from lib.extraction import final_answer
from lib.selection import group_answers, largest_first

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key-1"  # from the key file
ENV_KEY = "make-serve-key"  # from $MATHRAY_API_KEYS, as `make serve` gives it
LIMITS = {"max_n": 8, "max_best_of_n": 16, "max_tokens": 256, "max_prompt_tokens": 512, "max_body_bytes": 20_000}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m serve` on a free port with the shipped CPU config, plus a key file and this module's limits;
    keys from both $MATHRAY_API_KEYS and the file. Yields (process, log, port) once it prints its example;
    killed after the module if the SIGTERM test has not stopped it."""
    from lib.openai_server import free_port

    tmp = tmp_path_factory.mktemp("serve")
    keys = tmp / "api_keys"
    keys.write_text(f"# one key per line\n{KEY}\nother-key\n")
    config = yaml.safe_load((REPO / "serve/configs/serve_default_cpu.yaml").read_text())
    args = config["applications"][0]["args"]
    args["api_keys_file"] = str(keys)
    args["limits"] = {**args.get("limits", {}), **LIMITS}
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    port, log = free_port(), tmp / "serve.log"
    env = {**os.environ, "MATHRAY_API_KEYS": ENV_KEY, "RAY_ADDRESS": ""}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve", "--config", str(tmp / "serve.yaml"), "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops it" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready after 300 s"
            time.sleep(1)
        yield proc, log, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def endpoint(server):
    return f"http://127.0.0.1:{server[2]}"


def test_python_m_serve_prints_a_curl_example_that_names_the_env_var(server, endpoint):
    """The example names the env var (first comma-separated key, double quotes so the shell expands it), never
    the key itself; the env var's key is accepted."""
    _, log, port = server
    text = log.read_text()
    assert re.search(rf'curl -s http://127.0.0.1:{port}/v1/chat/completions -H "Authorization: Bearer '
                     r'\$\{MATHRAY_API_KEYS%%,\*\}"', text)
    assert ENV_KEY not in text
    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key=ENV_KEY, max_retries=0)
    reply = client.chat.completions.create(model="mathray", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8


@pytest.fixture
def client(endpoint):
    return openai.OpenAI(base_url=f"{endpoint}/v1", api_key=KEY, max_retries=0)


def post(endpoint, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{endpoint}{path}", json=body, headers=headers, timeout=120, **kw)


def test_chat_and_completions_through_the_openai_client(client):
    """n choices come back with usage that counts every completion token; completions and models too."""
    chat = client.chat.completions.create(model="mathray", messages=[{"role": "user", "content": "What is 2+3?"}],
                                          n=3, max_tokens=12, temperature=0.8, seed=1)
    assert len(chat.choices) == 3 and [c.index for c in chat.choices] == [0, 1, 2]
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in chat.choices)
    assert chat.usage.completion_tokens <= 36 and chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    done = client.completions.create(model="mathray", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens == 6 and done.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == ["mathray"]


def test_streaming_equals_the_non_streamed_greedy_answer(client):
    messages = [{"role": "user", "content": "Name three colors."}]
    plain = client.chat.completions.create(model="mathray", messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="mathray", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_best_of_n_majority_returns_the_largest_group_of_its_own_samples(client):
    """On a GSM8K question: the trace's groups are exactly lib.grading's grouping of its answers, the chosen
    answer is the largest group's, and the returned completion states that answer."""
    q = load_dataset("gsm8k", limit=1)[0]
    r = client.chat.completions.create(
        model="mathray", messages=[{"role": "user", "content": q.question + "\nPut the final answer in \\boxed{}."}],
        max_tokens=200, temperature=0.7, extra_body={"mathray": {"selection": "majority", "n": 12}})
    trace = r.model_extra["mathray"]
    assert trace["n"] == 12 and len(trace["answers"]) == 12 and len(r.choices) == 1
    expected = largest_first(group_answers(trace["answers"], is_equivalent))
    assert [g["members"] for g in trace["groups"]] == expected
    if expected:
        assert trace["chosen_index"] == expected[0][0] and trace["groups"][0]["votes"] == len(expected[0])
        assert all(trace["groups"][0]["votes"] >= g["votes"] for g in trace["groups"])
        assert final_answer(r.choices[0].message.content) == trace["chosen_answer"] == trace["answers"][expected[0][0]]
    assert r.usage.completion_tokens >= 12  # usage counts all 12 samples


def test_best_of_n_verifier_with_a_reference_grades_every_sample_and_follows_the_rule(client):
    """With reference '4': every sample with an answer carries its verdict, and the choice is the first
    correct sample of the largest group holding one (else the majority, or sample 0 without answers)."""
    r = client.chat.completions.create(
        model="mathray", messages=[{"role": "user", "content": "What is 2 + 2? Answer with \\boxed{}."}], max_tokens=60,
        temperature=1.0, extra_body={"mathray": {"selection": "verifier", "n": 16, "reference": "4"}})
    trace = r.model_extra["mathray"]
    for g in trace["groups"]:
        assert sorted(int(i) for i in g["verdicts"]) == g["members"]
        assert all(v == is_equivalent(g["answer"], "4") for v in g["verdicts"].values())
    correct = [g for g in trace["groups"] if any(g["verdicts"].values())]
    if correct:
        assert trace["chosen_answer"] == correct[0]["answer"] and trace["reason"].startswith("verifier: largest group")
    elif trace["groups"]:
        assert trace["reason"] == "verifier: no sample judged correct; fell back to the majority"
        assert trace["chosen_index"] == trace["groups"][0]["members"][0]
    else:
        assert trace["chosen_index"] == 0 and trace["chosen_answer"] is None


def test_verify_verdicts(endpoint):
    cases = [("so the answer is \\boxed{72}", "72", "correct"), ("\\boxed{70}", "72", "incorrect"),
             ("I do not know.", "72", "no_answer"), ("\\boxed{\\frac{1}{2}}", "0.5", "correct")]
    for response, reference, status in cases:
        body = post(endpoint, "/v1/verify", {"question": "q", "response": response, "reference": reference}).json()
        assert body["status"] == status, (response, body)
    unref = post(endpoint, "/v1/verify", {"response": "x = \\boxed{5}"}).json()
    assert unref["status"] == "unverified" and unref["extracted"] == "5"


def test_auth_is_required_on_v1_routes_but_not_on_probes(endpoint):
    body = {"model": "mathray", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for key in (None, "wrong-key"):
        r = post(endpoint, "/v1/chat/completions", body, key=key)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{endpoint}/v1/models").status_code == 401
    assert post(endpoint, "/v1/chat/completions", body, key="other-key").status_code == 200
    assert httpx.get(f"{endpoint}/health").json() == {"status": "ok"}
    assert httpx.get(f"{endpoint}/ready").json()["status"] == "ready"


@pytest.mark.parametrize("change,status,param", [
    ({"n": 9}, 400, "n"),
    ({"max_tokens": 257}, 400, "max_tokens"),
    ({"mathray": {"n": 17}}, 400, "mathray.n"),
    ({"model": "gpt-4"}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"temperature": 5}, 400, "temperature"),
    ({"stream": True, "n": 2}, 400, "stream"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
])
def test_oversize_and_invalid_requests_get_4xx_without_internals(endpoint, change, status, param):
    body = {"model": "mathray", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    r = post(endpoint, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and "Traceback" not in r.text and set(r.json()) == {"error"}


def test_body_size_and_bad_json(endpoint):
    r = post(endpoint, "/v1/completions", {"model": "mathray", "prompt": "x" * 30_000})
    assert r.status_code == 413
    r = httpx.post(f"{endpoint}/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(f"{endpoint}/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_bounded_load_32_clients_x_4_requests_no_5xx_no_lost_request(endpoint):
    """128 requests from 32 concurrent clients: every one answered 200 with its own completion."""
    async def client_session(i: int, http: httpx.AsyncClient) -> list[int]:
        codes = []
        for j in range(4):
            r = await http.post(f"{endpoint}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                                json={"model": "mathray", "prompt": f"Client {i} request {j}:", "max_tokens": 8})
            codes.append(r.status_code if r.status_code != 200 or r.json()["usage"]["completion_tokens"] > 0 else -1)
        return codes

    async def run():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.wait_for(asyncio.gather(*[client_session(i, http) for i in range(32)]), timeout=600)

    codes = [c for session in asyncio.run(run()) for c in session]
    assert len(codes) == 128 and codes.count(200) == 128


def test_synthesis_job_uses_the_endpoint_as_its_teacher(ray_cluster, endpoint, tmp_path, monkeypatch):
    """The tiny synthesis config, pointed at this app instead of starting vLLM's server: every request
    answered (0 failed), and the data card counts them."""
    from jobs.synthesize import main

    monkeypatch.setenv("SERVE_KEY", KEY)
    card = main(["--config", "jobs/configs/synthesize_tiny.yaml", "local_server=null", f"teacher.base_url={endpoint}/v1",
                 "teacher.model=mathray", "teacher.api_key_env=SERVE_KEY", "seed_limit=1", "stage.filters.verify=false",
                 "teacher.max_tokens=96",  # at most this app's limits.max_tokens (256): a larger request is a 400
                 f"output_dir={tmp_path / 'synth'}", "resources.cpus_per_client=0.25"]).card
    usage = card["usage"]  # requests are HTTP attempts: a retried one (a dropped keep-alive connection) counts twice
    assert usage["question"]["requests"] - usage["question"]["retries"] == 2 and card["totals"]["failed"] == 0
    assert usage["solution"]["requests"] - usage["solution"]["retries"] == 4 * card["stages"][3]["questions"]
    assert json.loads((tmp_path / "synth" / "summary.json").read_text())["seeds"] == 1


def test_sigterm_shuts_python_m_serve_down(server):
    """Last in the module: SIGTERM ends `python -m serve` with exit code 0 (Serve shut down gracefully)."""
    proc, log, _ = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
