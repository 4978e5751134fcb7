"""The sampling stages without an engine: AsyncVLLMSampler over a fake async engine (continuous batching across
calls, rows identical to VLLMSampler's, per-request errors), and the row shape both share."""

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from lib.prompts import get_prompt
from lib.sampling import SAMPLE_COLUMNS, AsyncVLLMSampler, SamplingSettings, VLLMSampler


class Tokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[0]["content"]

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 100 for c in text]

    bos_token_id = None


def completions(prompt, n):
    """What the fake engines answer: sample j of a prompt has j + 1 tokens and a text naming both."""
    key = sum(prompt["prompt_token_ids"])
    return [SimpleNamespace(index=j, text=f"p{key} s{j} \\boxed{{{j}}}", token_ids=[1] * (j + 1), finish_reason="stop")
            for j in reversed(range(n))]  # out of index order, as vLLM may return them


class AsyncEngine:
    """Stands in for vllm's AsyncLLM: request k finishes after ``delays[k]`` s; ``fail`` names prompts that raise."""

    def __init__(self, delays=(), fail=()):
        self.delays, self.fail = list(delays), set(fail)
        self.in_engine, self.peak, self.requests = 0, 0, 0

    async def generate(self, prompt, params, request_id):
        assert params.output_kind.name == "FINAL_ONLY"
        delay = self.delays[self.requests] if self.requests < len(self.delays) else 0
        self.requests += 1
        self.in_engine += 1
        self.peak = max(self.peak, self.in_engine)
        try:
            await asyncio.sleep(delay)
            if sum(prompt["prompt_token_ids"]) in self.fail:
                raise ValueError("engine rejected the request")
            yield SimpleNamespace(finished=True, outputs=completions(prompt, params.n))
        finally:
            self.in_engine -= 1


class Engine:
    """Stands in for vllm.LLM: one generate call for all prompts."""

    def generate(self, prompts, params, use_tqdm):
        return [SimpleNamespace(outputs=completions(p, sp.n)) for p, sp in zip(prompts, params)]


def make(cls, engine, max_model_len=4096):
    sampler = cls.__new__(cls)
    sampler.template, sampler.tokenizer, sampler.max_model_len = get_prompt("boxed"), Tokenizer(), max_model_len
    sampler.settings = SamplingSettings(max_tokens=16)
    if cls is AsyncVLLMSampler:
        sampler.engine, sampler.in_flight = engine, 0
    else:
        sampler.llm = engine
    return sampler


def batch(questions, indices, kind="sampled"):
    return {"question_id": [f"q{i}" for i in range(len(questions))], "dataset": ["d"] * len(questions),
            "kind": [kind] * len(questions), "sample_indices": indices, "question": questions, "gold": ["1"] * len(questions)}


def test_async_sampler_rows_equal_batch_sampler_rows():
    """Same request rows -> the same rows, column for column, in the same order (sample indices mapped to
    completions by their index, not by arrival order)."""
    b = batch(["one?", "two??", "three???"], [[0, 1, 2], [5, 6], [9]])
    rows = asyncio.run(make(AsyncVLLMSampler, AsyncEngine(delays=[0.03, 0.0, 0.01]))(b))
    assert rows == make(VLLMSampler, Engine())(b)
    assert list(rows) == list(SAMPLE_COLUMNS)
    assert rows["question_id"] == ["q0", "q0", "q0", "q1", "q1", "q2"]
    assert rows["sample_idx"] == [0, 1, 2, 5, 6, 9]
    assert rows["num_tokens"] == [1, 2, 3, 1, 2, 1]
    assert rows["error"] == [None] * 6


def test_concurrent_calls_share_the_engine():
    """Three batches in flight at once put all their requests into the engine together (continuous batching
    across batches), and each call still returns only its own rows."""
    engine = AsyncEngine(delays=[0.05] * 6)
    sampler = make(AsyncVLLMSampler, engine)

    async def three():
        return await asyncio.gather(*(sampler(batch([f"b{k} x", f"b{k} yy"], [[0, 1], [0]])) for k in range(3)))

    results = asyncio.run(three())
    assert engine.peak == 6 and engine.requests == 6 and sampler.in_flight == 0
    for rows in results:
        assert rows["question_id"] == ["q0", "q0", "q1"] and rows["sample_idx"] == [0, 1, 0]
    assert len({rows["text"][0] for rows in results}) == 3


def test_a_failed_request_fails_only_its_own_rows():
    """An engine error on one request yields error rows for that request's samples; the batch's other rows
    are kept (the batch sampler loses the whole batch to one error)."""
    bad = sum(Tokenizer().encode(get_prompt("boxed").render("bad", Tokenizer())))
    rows = asyncio.run(make(AsyncVLLMSampler, AsyncEngine(fail={bad}))(batch(["good", "bad"], [[0, 1], [3, 4]])))
    assert rows["sample_idx"] == [0, 1, 3, 4]
    assert rows["finish_reason"] == ["stop", "stop", "error", "error"]
    assert rows["error"][:2] == [None, None]
    assert rows["error"][2] == rows["error"][3] == "generate failed: ValueError: engine rejected the request"
    assert rows["text"][2:] == ["", ""] and rows["num_tokens"][2:] == [0, 0]


def test_prompt_longer_than_the_context_gives_error_rows_without_a_request():
    engine = AsyncEngine()
    rows = asyncio.run(make(AsyncVLLMSampler, engine, max_model_len=10)(batch(["a question far too long"], [[0, 1]])))
    assert engine.requests == 0
    assert rows["finish_reason"] == ["error", "error"] and rows["sample_idx"] == [0, 1]
    assert rows["error"][0].startswith("prompt has ") and rows["error"][0].endswith("tokens; max_model_len is 10")


def test_cancellation_is_not_recorded_as_a_row_error():
    """A cancelled call (the job stopping) propagates instead of being written as error rows."""
    sampler = make(AsyncVLLMSampler, AsyncEngine(delays=[10]))

    async def cancel():
        task = asyncio.create_task(sampler(batch(["q"], [[0]])))
        await asyncio.sleep(0.01)
        task.cancel()
        return await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancel())


def test_async_engines_get_the_scheduler_defaults_of_vllm_front_doors(tiny_model, monkeypatch):
    """The evaluation sampler's AsyncLLM is configured as ``vllm.LLM`` is (UsageContext.LLM_CLASS), Serve's as
    ``vllm serve`` is (OPENAI_API_SERVER), never with AsyncLLM.from_engine_args's fallback (ENGINE_CONTEXT:
    128 sequences, 2,048 batched tokens; on an H100, 8x fewer sequences than vllm.LLM runs). No engine starts:
    the engine constructors stop once the config is built."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine import async_llm, llm_engine

    from serve.model import ModelServer

    built = []

    class Built(Exception):
        pass

    create = EngineArgs.create_engine_config

    def record(self, usage_context=UsageContext.ENGINE_CONTEXT, *args, **kwargs):
        config = create(self, usage_context, *args, **kwargs)
        built.append((usage_context, config.scheduler_config.max_num_seqs, config.scheduler_config.max_num_batched_tokens))
        return config

    def stop(self, *args, **kwargs):
        raise Built

    monkeypatch.setattr(EngineArgs, "create_engine_config", record)
    monkeypatch.setattr(async_llm.AsyncLLM, "__init__", stop)
    monkeypatch.setattr(llm_engine.LLMEngine, "__init__", stop)
    engine = {"dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True}
    for make in (lambda: LLM(model=tiny_model, **engine),
                 lambda: AsyncVLLMSampler(tiny_model, "boxed", SamplingSettings(max_tokens=8), engine),
                 lambda: ModelServer.func_or_class({"model": tiny_model, "engine": engine, "allow_no_auth": True}),
                 lambda: EngineArgs(model=tiny_model, **engine).create_engine_config()):
        with pytest.raises(Built) if len(built) < 3 else contextlib.nullcontext():
            make()
    llm, sampler, served, fallback = built
    assert llm[0] == sampler[0] == UsageContext.LLM_CLASS and served[0] == UsageContext.OPENAI_API_SERVER
    assert sampler[1:] == llm[1:] == (256, 4096)  # vLLM's CPU defaults for vllm.LLM (world size 1)
    assert fallback == (UsageContext.ENGINE_CONTEXT, 128, 2048)  # what the sampler ran with before


@pytest.mark.parametrize("cuda,preset,bind,expected", [
    (False, None, "auto", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),  # CPU: engine core and worker in process
    (False, "1", "auto", {}),  # the caller's own setting wins
    (True, None, "auto", {}),  # a GPU node: vLLM's engine-core and worker processes
    (True, None, "0-3", {"VLLM_CPU_OMP_THREADS_BIND": "0-3"}),
    (False, None, "all", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0,1",
                          "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
])
def test_cpu_engine_env_runs_the_engine_in_process_only_without_cuda(monkeypatch, cuda, preset, bind, expected):
    import os

    import torch

    from lib.sampling import cpu_engine_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 0})
    if preset is None:
        monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    else:
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", preset)
    assert cpu_engine_env(bind) == expected


@pytest.mark.parametrize("cuda,machine,avx512_bf16,amx,expected", [
    (False, "x86_64", False, False, "float32"),  # AVX2-only x86: vLLM's "auto" would emulate bf16 (4x slower)
    (False, "x86_64", True, False, "auto"),
    (False, "x86_64", False, True, "auto"),
    (False, "aarch64", False, False, "auto"),
    (True, "x86_64", False, False, "auto"),  # a GPU node: vLLM decides
])
def test_auto_dtype_is_float32_only_on_an_x86_cpu_without_native_bf16(monkeypatch, tiny_model, cuda, machine, avx512_bf16, amx, expected):
    import platform

    import torch

    from lib.openai_server import LocalOpenAIServer, LocalServerConfig
    from lib.sampling import engine_args, engine_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert engine_dtype("auto") == expected
    assert engine_dtype("bfloat16") == "bfloat16" and engine_dtype("float16") == "float16"  # explicit: as written
    assert engine_args({"max_model_len": 512}) == {"max_model_len": 512, "dtype": expected}
    cmd = LocalOpenAIServer(LocalServerConfig(model=tiny_model, port=1)).command()
    assert cmd[cmd.index("--dtype") + 1] == expected
