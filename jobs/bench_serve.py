"""Benchmark: the Serve app against vLLM's own OpenAI server on the same model and machine, and the cost
of best-of-N.

For each concurrency level C, C clients each send ``--requests`` chat completions (GSM8K questions,
<= ``--max-tokens`` tokens, T=0.7, fixed seeds) and we report requests/s, completion tokens/s and p50/p99
latency, first for (a) this app (``serve.app:build_app``: ingress -> model deployment, on local Ray), then
for (b) ``vllm.entrypoints.openai.api_server``; the ratio a/b is our overhead. Then, on (a), best-of-N
(``mathray: {selection: majority, n: 8}``) vs a single sample on the same questions, one at a time.

Run: python -m jobs.bench_serve [--concurrency 1 4 16 --requests 4 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from lib.data import load_dataset
from lib.openai_server import LocalOpenAIServer, LocalServerConfig, free_port
from lib.progress import setup_logging
from lib.ray_runtime import init_ray

ENGINE = {"dtype": "bfloat16", "gpu_memory_utilization": 0.2, "enforce_eager": True, "cpu_threads_bind": "all",
          "max_model_len": 2048}
KEY = "bench-key"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def load(base_url: str, model: str, questions: list[str], concurrency: int, per_client: int, max_tokens: int,
               extra: dict | None = None) -> dict:
    latencies: list[float] = []
    tokens = 0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for j in range(per_client):
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": i * 1000 + j,
                    "messages": [{"role": "user", "content": questions[(i * per_client + j) % len(questions)]}], **(extra or {})}
            start = time.perf_counter()
            r = await http.post(f"{base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
            latencies.append(time.perf_counter() - start)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as http:
        await asyncio.gather(*[client(i, http) for i in range(concurrency)])
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "rps": len(latencies) / wall, "tps": tokens / wall,
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "mean": statistics.mean(latencies),
            "tokens": tokens}


def run_levels(base_url: str, model: str, questions: list[str], args) -> dict[int, dict]:
    asyncio.run(load(base_url, model, questions, 2, 1, 8))  # warm-up: first requests pay one-off costs
    return {c: asyncio.run(load(base_url, model, questions, c, args.requests, args.max_tokens)) for c in args.concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--best-of", type=int, default=8)
    args = parser.parse_args()
    setup_logging()
    questions = [q.question + "\nPut the final answer in \\boxed{}." for q in load_dataset("gsm8k", limit=64)]

    import ray
    from ray import serve

    from serve.app import build_app

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text(KEY + "\n")
        init_ray()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": "default", "api_keys_env": None, "api_keys_file": str(keys), "engine": ENGINE,
                             "limits": {"max_best_of_n": 64}}), name="mathray", route_prefix="/")
        ours_url = f"http://127.0.0.1:{port}/v1"
        ours = run_levels(ours_url, "mathray", questions, args)
        n = 8  # questions for the best-of-N comparison
        single = asyncio.run(load(ours_url, "mathray", questions, 1, n, args.max_tokens))
        best = asyncio.run(load(ours_url, "mathray", questions, 1, n, args.max_tokens,
                                {"mathray": {"selection": "majority", "n": args.best_of}}))
        serve.shutdown()
        ray.shutdown()

    cfg = LocalServerConfig(served_name="mathray", max_model_len=ENGINE["max_model_len"])
    with tempfile.TemporaryDirectory() as tmp, LocalOpenAIServer(cfg, log_path=Path(tmp) / "vllm.log") as server:
        theirs = run_levels(server.base_url, "mathray", questions, args)

    print(f"\nserve benchmark: default model, GSM8K chat prompts, <= {args.max_tokens} tokens, T=0.7, "
          f"{args.requests} requests per client")
    print("| concurrency | path | requests | req/s | completion tok/s | p50 s | p99 s |")
    print("|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        for name, r in (("(a) mathray Serve app", ours[c]), ("(b) vLLM OpenAI server", theirs[c])):
            print(f"| {c} | {name} | {r['requests']} | {r['rps']:.2f} | {r['tps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    for c in args.concurrency:
        print(f"concurrency {c}: ratio a/b {ours[c]['rps'] / theirs[c]['rps']:.2f} req/s, "
              f"p50 latency a/b {ours[c]['p50'] / theirs[c]['p50']:.2f}")
    print(f"best-of-{args.best_of} (majority) vs one sample, {n} questions one at a time on (a): "
          f"latency p50 {best['p50']:.2f} s vs {single['p50']:.2f} s ({best['p50'] / single['p50']:.2f}x), "
          f"completion tokens {best['tokens']} vs {single['tokens']} ({best['tokens'] / max(single['tokens'], 1):.2f}x)")


if __name__ == "__main__":
    main()
