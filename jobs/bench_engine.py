"""Benchmark: vLLM's async engine as the samplers and Serve start it, ``AsyncLLM`` against the in-process
:class:`lib.threaded_engine.ThreadedAsyncEngine` that :func:`lib.sampling.start_async_engine` picks without CUDA.

Each kind runs ``--repeats`` times, alternating, each time in a fresh Python process (imports count, as in a
Ray actor): seconds from process start to a ready engine, then ``--requests`` concurrent requests of ``--n``
samples x up to ``--max-tokens`` tokens (T=1, seeded) on one chat prompt, generated tokens/s, and the greedy
answer (both kinds must give the same). Prints the medians and the ratios threaded / AsyncLLM. Both get
``cpu_engine_env`` (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so ``AsyncLLM`` starts no worker process beside its
engine-core process).

Run: python -m jobs.bench_engine [--model default --repeats 2 --requests 8 --n 8 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

START = time.monotonic()
KINDS = ("asyncllm", "threaded")


def one(kind: str, model: str, requests: int, n: int, max_tokens: int) -> dict:
    """Start the engine of ``kind`` in this process, sample, return the figures."""
    from lib.models import resolve_model
    from lib.sampling import cpu_engine_env, engine_args, start_async_engine

    os.environ.update(cpu_engine_env("auto"))
    path = str(resolve_model(model))
    kwargs = {"dtype": "auto", "max_model_len": 1024, "enforce_eager": True, "gpu_memory_utilization": 0.2}
    if kind == "threaded":
        engine = start_async_engine(path, kwargs)
    else:  # what start_async_engine returned before the threaded engine: AsyncLLM with the same arguments
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=path, disable_log_stats=True, **engine_args(kwargs))
        engine = AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
    ready = time.monotonic() - START

    async def sample() -> tuple[int, float, str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        tokenizer = engine.get_tokenizer()
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many?"}],
                                             add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)

        async def request(i: int, params) -> object:
            final = None
            async for output in engine.generate({"prompt_token_ids": ids}, params, f"r{i}"):
                final = output
            return final

        start = time.monotonic()
        finals = await asyncio.gather(*(request(i, SamplingParams(n=n, temperature=1.0, seed=i, max_tokens=max_tokens,
                                                                   output_kind=RequestOutputKind.FINAL_ONLY))
                                        for i in range(requests)))
        elapsed = time.monotonic() - start
        tokens = sum(len(o.token_ids) for f in finals for o in f.outputs)
        greedy = await request(requests, SamplingParams(temperature=0, max_tokens=max_tokens))
        return tokens, elapsed, greedy.outputs[0].text

    tokens, elapsed, greedy = asyncio.run(sample())
    engine.shutdown()
    return {"kind": kind, "ready_s": round(ready, 1), "tokens": tokens, "tokens_per_s": round(tokens / elapsed, 1),
            "greedy": greedy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)  # the child process's own run
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.model, args.requests, args.n, args.max_tokens)), flush=True)
        return
    results: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for repeat in range(args.repeats):
        for kind in KINDS if repeat % 2 == 0 else reversed(KINDS):
            cmd = [sys.executable, "-m", "jobs.bench_engine", "--one", kind, "--model", args.model, "--requests",
                   str(args.requests), "--n", str(args.n), "--max-tokens", str(args.max_tokens)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            results[kind].append(result)
            print(f"{kind:9s} ready {result['ready_s']:6.1f} s  {result['tokens']:5d} tokens at "
                  f"{result['tokens_per_s']:6.1f} tokens/s", flush=True)
    med = {kind: {key: statistics.median(r[key] for r in rs) for key in ("ready_s", "tokens_per_s")} for kind, rs in results.items()}
    for kind in KINDS:
        print(f"median {kind:9s} ready {med[kind]['ready_s']:6.1f} s  {med[kind]['tokens_per_s']:6.1f} tokens/s")
    print(f"threaded / AsyncLLM: ready time x{med['threaded']['ready_s'] / med['asyncllm']['ready_s']:.2f}, "
          f"tokens/s x{med['threaded']['tokens_per_s'] / med['asyncllm']['tokens_per_s']:.2f}")
    greedy = {r["greedy"] for rs in results.values() for r in rs}
    print(f"greedy answers identical across runs and kinds: {len(greedy) == 1}")


if __name__ == "__main__":
    main()
