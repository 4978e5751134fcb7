"""Benchmark: sampling throughput of the evaluate pipeline vs bare vLLM vs transformers, and grading.

Runs the same prompts (the default model, ``--questions`` GSM8K questions x ``--samples`` samples x
up to ``--max-tokens`` tokens, T=0.7) through
  (a) the evaluate pipeline (``jobs.evaluate``, stage=sample: Ray Data + vLLM actor + grading + Parquet),
  (b) bare ``vllm.LLM.generate`` on all prompts at once,
  (c) ``transformers`` ``generate`` (on ``--hf-questions`` questions only: it is slow),
and prints generated tokens/s for each and the ratios a/b and b/c. (a) and (b) are timed end to end,
engine start included (for (a) also Ray start); (b) also prints its generate-only rate.
Then grading throughput on (a)'s samples: samples/s with the answer cache vs grading every sample.

Run: python -m jobs.bench_sampling [--questions 8 --samples 64 --max-tokens 256]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from lib.data import load_dataset
from lib.grading import Grader
from lib.models import resolve_model
from lib.progress import setup_logging
from lib.prompts import get_prompt
from lib.sample_store import SampleStore
from lib.sampling import cpu_binding_env

log = logging.getLogger("mathray.bench_sampling")
ENGINE = {"dtype": "bfloat16", "max_model_len": 2048, "gpu_memory_utilization": 0.2, "enforce_eager": True}


def bench_pipeline(args, output_dir: Path) -> tuple[float, int]:
    from jobs.evaluate import main as evaluate

    overrides = [
        f"limit={args.questions}", f"samples_per_question={args.samples}", f"max_tokens={args.max_tokens}",
        "greedy=false", "stage=sample", f"output_dir={output_dir}", "temperature=0.7",
        f"resources.samples_per_request={args.samples}", f"resources.requests_per_batch={args.questions}",
    ] + [f"engine.{k}={v}" for k, v in ENGINE.items()] + [f"engine.cpu_threads_bind={args.cpu_threads_bind}"]
    start = time.perf_counter()
    evaluate(["--config", "jobs/configs/evaluate_tiny.yaml", *overrides])
    wall = time.perf_counter() - start
    tokens = sum(SampleStore(output_dir).read("samples", ["question_id", "sample_idx", "num_tokens"]).column("num_tokens").to_pylist())
    return wall, tokens


def bench_vllm(args, prompts: list[str]) -> tuple[float, float, int]:
    start = time.perf_counter()  # the import counts: (a) pays it inside its actor too
    from vllm import LLM, SamplingParams

    os.environ.update(cpu_binding_env(args.cpu_threads_bind))
    llm = LLM(model=resolve_model("default"), **ENGINE)
    gen_start = time.perf_counter()
    outputs = llm.generate(prompts, SamplingParams(n=args.samples, temperature=0.7, max_tokens=args.max_tokens), use_tqdm=False)
    end = time.perf_counter()
    tokens = sum(len(o.token_ids) for out in outputs for o in out.outputs)
    del llm
    return end - start, end - gen_start, tokens


def bench_transformers(args, prompts: list[str]) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("default")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokens, start = 0, time.perf_counter()
    for prompt in prompts[: args.hf_questions]:
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=0.7, max_new_tokens=args.max_tokens,
                                 num_return_sequences=args.hf_samples, pad_token_id=tok.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        tokens += int(((new != tok.eos_token_id) & (new != tok.pad_token_id)).sum())
    return time.perf_counter() - start, tokens


def bench_grading(output_dir: Path) -> tuple[float, float, int, list[int]]:
    table = SampleStore(output_dir).read("samples", ["question_id", "sample_idx", "text", "gold"])
    items = list(zip(table.column("text").to_pylist(), table.column("gold").to_pylist(), table.column("question_id").to_pylist()))
    rates, comparisons = [], []
    for cached in (True, False):
        with Grader() as grader:
            grader.grade("warm-up \\boxed{1}", "1")
            start = time.perf_counter()
            if cached:
                grader.grade_many(items)
            else:  # a distinct cache key per sample: every sample is compared
                grader.grade_many([(t, g, f"{q}#{i}") for i, (t, g, q) in enumerate(items)])
            rates.append(len(items) / (time.perf_counter() - start))
            comparisons.append(grader.stats["comparisons"] - 1)
    return rates[0], rates[1], len(items), comparisons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--hf-questions", type=int, default=2)
    parser.add_argument("--hf-samples", type=int, default=8)
    parser.add_argument("--cpu-threads-bind", default="all", help="vLLM CPU thread binding for (a) and (b): all | auto | nobind")
    args = parser.parse_args()
    setup_logging()
    questions = load_dataset("gsm8k", limit=args.questions)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("default"))
    prompts = [get_prompt("boxed").render(q.question, tok) for q in questions]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench"
        a_wall, a_tokens = bench_pipeline(args, out)
        import ray

        ray.shutdown()
        b_wall, b_gen, b_tokens = bench_vllm(args, prompts)
        c_wall, c_tokens = bench_transformers(args, prompts)
        cached_rate, uncached_rate, num_graded, comparisons = bench_grading(out)
    a, b, b_only, c = a_tokens / a_wall, b_tokens / b_wall, b_tokens / b_gen, c_tokens / c_wall
    print(f"\nsampling: vLLM CPU thread binding {args.cpu_threads_bind!r}; {args.questions} GSM8K questions x {args.samples} samples x <= {args.max_tokens} tokens, T=0.7, SmolLM2-135M bf16")
    print(f"(a) evaluate pipeline   {a_tokens:>8} tokens in {a_wall:7.1f} s  {a:8.1f} tokens/s  (Ray start, vLLM import + engine start included)")
    print(f"(b) bare vllm generate  {b_tokens:>8} tokens in {b_wall:7.1f} s  {b:8.1f} tokens/s  (import + engine start included; generate only: {b_only:.1f})")
    print(f"(c) transformers        {c_tokens:>8} tokens in {c_wall:7.1f} s  {c:8.1f} tokens/s  ({args.hf_questions} questions x {args.hf_samples} samples)")
    print(f"a/b = {a / b:.2f}   b/c = {b / c:.2f}   (b generate-only)/c = {b_only / c:.2f}")
    print(f"grading {num_graded} samples: {cached_rate:.0f} samples/s with the answer cache ({comparisons[0]} comparisons), "
          f"{uncached_rate:.0f} samples/s without ({comparisons[1]} comparisons): {cached_rate / uncached_rate:.1f}x")


if __name__ == "__main__":
    main()
