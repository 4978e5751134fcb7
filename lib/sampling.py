"""The vLLM sampling stage: a callable class ``(batch of requests) -> rows, one per sample``.

:class:`AsyncVLLMSampler` (the evaluation job's) runs vLLM's async engine and keeps the requests of several
Ray Data batches in it at once (continuous batching across batches); :class:`VLLMSampler` makes one
``vllm.LLM.generate`` call per batch. Both return the same rows.

A request row asks for the samples ``sample_indices`` of one question (``n = len(sample_indices)`` in
one vLLM request, so they share the prompt's prefix cache). The stage returns one row per sample and
never loses one: a request the engine rejects (e.g. a prompt longer than the context) yields rows
with ``finish_reason="error"`` and the message in ``error``; the grader marks them ``status=error``.

vLLM is imported lazily, inside the class, so this module imports on machines without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from lib.config import StrictModel
from lib.progress import setup_logging
from lib.prompts import get_prompt
from lib.schemas import QUESTION_ID, SAMPLER_COLUMNS

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = SAMPLER_COLUMNS  # one row per sample (lib.schemas)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling parameters of the run (recorded in every output); greedy requests use temperature 0."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # any other vllm.SamplingParams field

    def params(self, n: int, greedy: bool, max_tokens: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            max_tokens=max_tokens,
            stop=list(self.stop) or None,
            **self.extra,
        )


class EngineConfig(StrictModel):
    """vLLM engine arguments (``extra`` is passed to ``vllm.LLM`` as is)."""

    dtype: str = Field("auto", description="'auto': vLLM's choice, except float32 on an x86 CPU without native bf16 "
                       "(engine_dtype); or an explicit dtype, passed as is")
    max_model_len: int = 4096
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="on CPU: fraction of RAM for the KV cache")
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    enable_prefix_caching: bool = True
    seed: int = 0
    cpu_threads_bind: str = Field(
        "auto",
        description="CPU backend only: 'auto' (vLLM's default: reserves a core for the scheduler), 'all' (OpenMP "
        "threads on every core the actor sees: 1.7x tokens/s on a 2-core machine), 'nobind', or a list like '0-3'",
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out = self.model_dump(exclude={"extra", "max_num_seqs", "cpu_threads_bind"})
        if self.max_num_seqs is not None:
            out["max_num_seqs"] = self.max_num_seqs
        return {**out, **self.extra}


def cpu_engine_env(cpu_threads_bind: str) -> dict[str, str]:
    """Environment for vLLM's engine on the CPU backend, set in the process that starts the engine (inherited by
    any process the engine starts).

    Thread binding: ``"all"`` binds the OpenMP threads to every core this process may run on, with no core
    reserved for the engine's scheduler; ``"auto"`` keeps vLLM's default; else the value is vLLM's core list.

    Processes: without CUDA the engine core and its worker run in the calling process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: ``vllm.LLM`` steps it in place, :func:`start_async_engine` returns a
    :class:`lib.threaded_engine.ThreadedAsyncEngine`; only ``vllm serve`` keeps its engine-core process). vLLM's
    CPU build otherwise starts an engine-core process and a worker process, each importing vLLM again: on a
    2-core AVX2 machine the tiny model's ``vllm.LLM`` was ready in 25 s instead of 76 s; SmolLM2's async engine
    in 26 s instead of ``AsyncLLM``'s 39 s (``python -m jobs.bench_engine``), at the same tokens/s (the CPU
    backend has no asynchronous scheduling for a separate process to overlap). On a GPU vLLM's default stays.
    A value the caller set in the environment wins.
    """
    env: dict[str, str] = {}
    if "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if cpu_threads_bind == "all":
        cores = sorted(os.sched_getaffinity(0))
        env.update(VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, cores)), VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    elif cpu_threads_bind != "auto":
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind
    return env


def engine_dtype(dtype: str) -> str:
    """The dtype to give vLLM, resolved on the machine that runs the engine. ``"auto"`` on an x86 CPU without
    native bf16 (no AVX512-BF16, no AMX; e.g. AVX2-only laptops and servers) is ``"float32"``: there vLLM's own
    "auto" picks a bf16 model's bf16 and emulates it (SmolLM2-135M on a 2-core AVX2 EPYC: 20 tokens/s in bf16,
    86 in float32). On a GPU, another CPU, or with an explicit dtype, the value goes to vLLM unchanged."""
    if dtype != "auto":
        return dtype
    import platform

    import torch

    if torch.cuda.is_available() or platform.machine().lower() not in ("x86_64", "amd64"):
        return dtype
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return dtype
    return "float32"


def engine_args(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``engine_kwargs`` with its dtype resolved by :func:`engine_dtype` (for ``vllm.LLM`` / ``AsyncEngineArgs``)."""
    return {**engine_kwargs, "dtype": engine_dtype(engine_kwargs.get("dtype", "auto"))}


def start_async_engine(model_path: str, engine_kwargs: dict[str, Any], online: bool = False) -> Any:
    """vLLM's ``AsyncLLM`` with the scheduler defaults of vLLM's own front door for the job: offline batch
    sampling gets ``vllm.LLM``'s (``UsageContext.LLM_CLASS``), an online endpoint gets ``vllm serve``'s
    (``OPENAI_API_SERVER``). ``AsyncLLM.from_engine_args`` alone takes ``ENGINE_CONTEXT``, whose fallbacks
    (``max_num_seqs`` 128, 2,048 batched tokens) cap the running batch below ``vllm.LLM``'s (256 and 4,096 on
    the CPU build; 1,024 sequences and 16,384 tokens on an H100-class GPU). Explicit ``engine_kwargs`` win.
    Where :func:`cpu_engine_env` keeps the engine core in-process (no CUDA), the same engine arguments start
    :class:`lib.threaded_engine.ThreadedAsyncEngine` instead: ``AsyncLLM`` always spawns an engine-core process."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    context = UsageContext.OPENAI_API_SERVER if online else UsageContext.LLM_CLASS
    kwargs = {"disable_log_stats": True, **engine_args(engine_kwargs)}  # as vllm.LLM: no stats line every 10 s
    args = AsyncEngineArgs(model=model_path, **kwargs)
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":  # cpu_engine_env: the engine core in this process
        from lib.threaded_engine import ThreadedAsyncEngine

        return ThreadedAsyncEngine.from_engine_args(args, usage_context=context)
    return AsyncLLM.from_engine_args(args, usage_context=context)


class _SamplerBase:
    """What both samplers share: request rows -> engine requests, engine outputs -> one row per sample."""

    template: Any
    settings: SamplingSettings
    tokenizer: Any
    max_model_len: int

    def _setup(self, prompt: str, settings: SamplingSettings, cpu_threads_bind: str) -> None:
        setup_logging()  # this runs in a Ray actor process: its own logging setup
        os.environ.update(cpu_engine_env(cpu_threads_bind))  # before the engine starts; inherited by its processes
        self.template = get_prompt(prompt)
        self.settings = settings

    def _requests(self, batch: dict[str, Any], out: dict[str, list]) -> list[tuple[int, list[int], dict, Any]]:
        """The engine requests of ``batch``: (row, sample indices, prompt, params); a prompt too long for the
        context gets its error rows in ``out`` and no request."""
        requests = []
        for i in range(len(batch[QUESTION_ID])):
            indices = [int(x) for x in batch["sample_indices"][i]]
            greedy = batch["kind"][i] == "greedy"
            prompt = {"prompt_token_ids": self.template.token_ids(str(batch["question"][i]), self.tokenizer)}  # BOS rule
            prompt_len = len(prompt["prompt_token_ids"])
            room = self.max_model_len - prompt_len
            if room < 1:
                self._emit(out, batch, i, indices, error=f"prompt has {prompt_len} tokens; max_model_len is {self.max_model_len}")
                continue
            requests.append((i, indices, prompt, self.settings.params(len(indices), greedy, min(self.settings.max_tokens, room))))
        return requests

    def _emit_result(self, out: dict, batch: dict, i: int, indices: list[int], result: Any) -> None:
        """The rows of one finished request: one per requested sample index, in index order."""
        completions = sorted(result.outputs, key=lambda o: o.index)
        for sample_idx, completion in zip(indices, completions):
            self._append(out, batch, i, sample_idx, completion.text, len(completion.token_ids), str(completion.finish_reason), None)
        for sample_idx in indices[len(completions):]:
            self._append(out, batch, i, sample_idx, "", 0, "error", "engine returned fewer samples than requested")

    def _emit(self, out: dict, batch: dict, i: int, indices: list[int], error: str) -> None:
        for sample_idx in indices:
            self._append(out, batch, i, sample_idx, "", 0, "error", error)

    @staticmethod
    def _append(out: dict, batch: dict, i: int, sample_idx: int, text: str, num_tokens: int, finish: str, error: str | None) -> None:
        out[QUESTION_ID].append(str(batch[QUESTION_ID][i]))
        out["dataset"].append(str(batch["dataset"][i]))
        out["kind"].append(str(batch["kind"][i]))
        out["sample_idx"].append(sample_idx)
        out["gold"].append(str(batch["gold"][i]))
        out["text"].append(text)
        out["num_tokens"].append(num_tokens)
        out["finish_reason"].append(finish)
        out["error"].append(error)


def generate_error(exc: BaseException) -> str:
    """The ``error`` of a sample whose request the engine failed."""
    return f"generate failed: {type(exc).__name__}: {exc}"[:500]


class VLLMSampler(_SamplerBase):
    """Ray Data stage over ``vllm.LLM``: request rows in, one row per sample out; one ``generate`` call per batch
    (the batch ends with its longest sample: kept as the reference for :class:`AsyncVLLMSampler`)."""

    def __init__(self, model: str, prompt: str, settings: SamplingSettings, engine_kwargs: dict[str, Any], cpu_threads_bind: str = "auto"):
        from vllm import LLM

        from lib.models import resolve_model

        start = time.monotonic()
        self._setup(prompt, settings, cpu_threads_bind)
        engine_kwargs = engine_args(engine_kwargs)
        self.llm = LLM(model=resolve_model(model), **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        log.info("vLLM engine ready in %.1f s (%s)", time.monotonic() - start, engine_kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {c: [] for c in SAMPLE_COLUMNS}
        requests = self._requests(batch, out)
        if not requests:
            return out
        try:
            start = time.monotonic()
            results = self.llm.generate([r[2] for r in requests], [r[3] for r in requests], use_tqdm=False)
            elapsed = time.monotonic() - start
            tokens = sum(len(o.token_ids) for r in results for o in r.outputs)
            log.info("generated %d tokens for %d requests in %.1f s (%.0f tokens/s)", tokens, len(requests), elapsed, tokens / elapsed)
        except Exception as exc:  # noqa: BLE001 - an engine error must not lose the batch's samples
            log.exception("vLLM generate failed for a batch of %d requests", len(requests))
            for i, indices, _, _ in requests:
                self._emit(out, batch, i, indices, error=generate_error(exc))
            return out
        for (i, indices, _, _), result in zip(requests, results):
            self._emit_result(out, batch, i, indices, result)
        return out


class AsyncVLLMSampler(_SamplerBase):
    """Ray Data stage over vLLM's async engine (``AsyncLLM``): continuous batching across Ray Data batches.

    ``__call__`` is a coroutine: an actor that runs several calls at once (``map_batches`` with
    ``ActorPoolStrategy(max_concurrent_calls_per_actor=K)``) keeps the requests of up to K batches in the
    engine, so a batch's long tail overlaps the next batches' samples instead of idling the engine.
    Memory stays bounded by K batches. Rows are those of :class:`VLLMSampler` (same columns, same
    sample indices, one row per requested sample); an engine error fails only its own request's rows.
    """

    def __init__(self, model: str, prompt: str, settings: SamplingSettings, engine_kwargs: dict[str, Any], cpu_threads_bind: str = "auto"):
        from lib.models import resolve_model

        start = time.monotonic()
        self._setup(prompt, settings, cpu_threads_bind)
        self.engine = start_async_engine(resolve_model(model), engine_kwargs)  # vllm.LLM's batch defaults
        self.tokenizer = self.engine.get_tokenizer()
        self.max_model_len = self.engine.model_config.max_model_len
        self.in_flight = 0  # requests in the engine, over all concurrent calls
        log.info("vLLM async engine (%s) ready in %.1f s (%s)", type(self.engine).__name__, time.monotonic() - start, engine_kwargs)

    async def _generate(self, prompt: dict, params: Any) -> Any:
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, all n samples in it
        final = None
        self.in_flight += 1
        try:
            async for output in self.engine.generate(prompt, params, request_id=uuid.uuid4().hex):
                final = output
        finally:
            self.in_flight -= 1
        if final is None or not final.finished:
            raise RuntimeError("the engine ended the request without a final output")
        return final

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {c: [] for c in SAMPLE_COLUMNS}
        requests = self._requests(batch, out)
        if not requests:
            return out
        start = time.monotonic()
        results = await asyncio.gather(*(self._generate(prompt, params) for _, _, prompt, params in requests), return_exceptions=True)
        tokens = 0
        for (i, indices, _, _), result in zip(requests, results):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):  # cancellation, KeyboardInterrupt: not a row's failure
                    raise result
                log.error("vLLM request failed for question %s: %s", batch[QUESTION_ID][i], generate_error(result))
                self._emit(out, batch, i, indices, error=generate_error(result))
                continue
            tokens += sum(len(o.token_ids) for o in result.outputs)
            self._emit_result(out, batch, i, indices, result)
        elapsed = time.monotonic() - start
        log.info("generated %d tokens for %d requests in %.1f s (%d requests still in the engine)",
                 tokens, len(requests), elapsed, self.in_flight)
        return out
