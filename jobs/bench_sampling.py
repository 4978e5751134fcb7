"""Benchmark: sampling throughput of the evaluate pipeline vs bare vLLM vs transformers, and grading.

Two cases, each a set of GSM8K prompts at T=0.7 on the default model:
  default    ``--questions`` x ``--samples`` samples x up to ``--max-tokens`` tokens;
  long-tail  ``--tail-questions`` x ``--tail-samples`` x up to ``--tail-max-tokens`` (a high cap: samples end
             anywhere from a few dozen tokens to the cap, so a batch's longest sample is far longer than its median).
Each case runs through
  (a) the evaluate pipeline (``jobs.evaluate``, stage=sample: Ray Data + the async vLLM actor with
      ``--batches-in-flight`` (long-tail: ``--tail-batches-in-flight``) batches of ``--requests-per-batch``
      requests in its engine + grading + Parquet),
  (b) bare ``vllm.LLM.generate`` on all of the case's prompts at once (the engine's ceiling),
and the bench prints a/b of generated tokens/s
  end to end   (a): the whole evaluate run, Ray start, actor and engine start included; (b): vLLM import +
               engine start (measured once, charged to each case) + the generate call;
  steady state start-up excluded: (a) minus the wall time of a 1-question x 1-sample x 1-token evaluate run
               (Ray, actor, engine, grader start, one Parquet part; the second of two such runs: the first
               also warms the page cache); (b) the generate call alone.
Then (c) ``transformers`` ``generate`` (``--hf-questions`` questions only: it is slow), b/c, and grading
throughput on (a)'s default-case samples: samples/s with the answer cache vs grading every sample.

Run: python -m jobs.bench_sampling [--questions 8 --samples 64 --max-tokens 256 --cases default,long-tail]
The grading/storage side at scale: python -m jobs.bench_grading
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lib.data import load_dataset
from lib.grading import Grader
from lib.models import resolve_model
from lib.progress import setup_logging
from lib.prompts import get_prompt
from lib.sample_store import SampleStore
from lib.sampling import SamplingSettings, cpu_engine_env
from lib.schemas import QUESTION_ID

log = logging.getLogger("mathray.bench_sampling")
ENGINE = {"dtype": "bfloat16", "max_model_len": 2048, "gpu_memory_utilization": 0.2, "enforce_eager": True}
TEMPERATURE = 0.7


@dataclass(frozen=True)
class Case:
    name: str
    questions: int
    samples: int
    max_tokens: int
    batches_in_flight: int


@dataclass
class Timing:
    wall_s: float
    tokens: int
    lengths: list[int]


def evaluate_overrides(args, case: Case, output_dir: Path) -> list[str]:
    overrides = [
        f"limit={case.questions}", f"samples_per_question={case.samples}", f"max_tokens={case.max_tokens}",
        "greedy=false", "stage=sample", f"output_dir={output_dir}", f"temperature={TEMPERATURE}",
        f"resources.samples_per_request={case.samples}", f"resources.requests_per_batch={args.requests_per_batch}",
        f"resources.batches_in_flight_per_engine={case.batches_in_flight}",
    ]
    return overrides + [f"engine.{k}={v}" for k, v in ENGINE.items()] + [f"engine.cpu_threads_bind={args.cpu_threads_bind}"]


def bench_pipeline(args, case: Case, output_dir: Path) -> Timing:
    """One evaluate run from a cold start (Ray is shut down afterwards, so each run pays its own start)."""
    import ray

    from jobs.evaluate import main as evaluate

    start = time.perf_counter()
    evaluate(["--config", "jobs/configs/evaluate_tiny.yaml", *evaluate_overrides(args, case, output_dir)])
    wall = time.perf_counter() - start
    ray.shutdown()
    lengths = SampleStore(output_dir).read("samples", [QUESTION_ID, "sample_idx", "num_tokens"]).column("num_tokens").to_pylist()
    return Timing(wall, sum(lengths), lengths)


def case_prompts(case: Case, tokenizer) -> list[dict]:
    """The prompts evaluate sends for ``case`` (token ids under the BOS rule, as lib.sampling does)."""
    template = get_prompt("boxed")
    return [{"prompt_token_ids": template.token_ids(q.question, tokenizer)} for q in load_dataset("gsm8k", limit=case.questions)]


def bench_vllm(args, cases: list[Case]) -> tuple[float, list[Timing]]:
    """Import + engine start once, then one generate call per case: (start-up s, per-case generate timings)."""
    start = time.perf_counter()  # the import counts: (a) pays it inside its actor too
    from vllm import LLM

    os.environ.update(cpu_engine_env(args.cpu_threads_bind))
    llm = LLM(model=resolve_model("default"), **ENGINE)
    startup = time.perf_counter() - start
    tokenizer, timings = llm.get_tokenizer(), []
    for case in cases:
        prompts = case_prompts(case, tokenizer)
        params = SamplingSettings(TEMPERATURE, 1.0, case.max_tokens, get_prompt("boxed").stop).params(case.samples, False, case.max_tokens)
        gen_start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - gen_start
        lengths = [len(o.token_ids) for out in outputs for o in out.outputs]
        timings.append(Timing(wall, sum(lengths), lengths))
    del llm
    return startup, timings


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
            out = model.generate(**inputs, do_sample=True, temperature=TEMPERATURE, max_new_tokens=args.max_tokens,
                                 num_return_sequences=args.hf_samples, pad_token_id=tok.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        tokens += int(((new != tok.eos_token_id) & (new != tok.pad_token_id)).sum())
    return time.perf_counter() - start, tokens


def bench_grading(output_dir: Path) -> tuple[float, float, int, list[int]]:
    table = SampleStore(output_dir).read("samples", [QUESTION_ID, "sample_idx", "text", "gold"])
    items = list(zip(table.column("text").to_pylist(), table.column("gold").to_pylist(), table.column(QUESTION_ID).to_pylist()))
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


def spread(lengths: list[int]) -> str:
    q = statistics.quantiles(lengths, n=10) if len(lengths) > 1 else [lengths[0]] * 9
    return f"sample lengths p10 {q[0]:.0f} / median {statistics.median(lengths):.0f} / p90 {q[8]:.0f} / max {max(lengths)} tokens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--tail-questions", type=int, default=16)
    parser.add_argument("--tail-samples", type=int, default=16)
    parser.add_argument("--tail-max-tokens", type=int, default=1024)
    parser.add_argument("--cases", default="default,long-tail", help="comma-separated: default, long-tail")
    parser.add_argument("--requests-per-batch", type=int, default=2, help="(a): resources.requests_per_batch")
    parser.add_argument("--batches-in-flight", type=int, default=4, help="(a), default case: resources.batches_in_flight_per_engine")
    parser.add_argument("--tail-batches-in-flight", type=int, default=8,
                        help="(a), long-tail case: 8 batches x 2 requests x 16 samples = 256 sequences, vLLM's max_num_seqs on CPU")
    parser.add_argument("--hf-questions", type=int, default=2)
    parser.add_argument("--hf-samples", type=int, default=8)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench_sampling"),
                        help="(a)'s evaluate output_dirs, one per case (removed first; jobs.bench_grading replays the default case's samples)")
    parser.add_argument("--cpu-threads-bind", default="all", help="vLLM CPU thread binding for (a) and (b): all | auto | nobind")
    args = parser.parse_args()
    setup_logging()
    # Ray starts its workers at nice 15 (the vLLM actor and the engine processes it forks): on a shared machine
    # that hands (a)'s engine CPU to every other user's process, while (b) runs at nice 0. Same priority for both.
    os.environ.setdefault("RAY_worker_niceness", "0")
    known = {"default": Case("default", args.questions, args.samples, args.max_tokens, args.batches_in_flight),
             "long-tail": Case("long-tail", args.tail_questions, args.tail_samples, args.tail_max_tokens, args.tail_batches_in_flight)}
    unknown = set(args.cases.split(",")) - set(known)
    if unknown:
        parser.error(f"--cases: unknown {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    cases = [known[name] for name in args.cases.split(",")]
    shutil.rmtree(args.output_dir, ignore_errors=True)
    # Start-up twice, the second counted: the first also warms the page cache (model files, imports), which
    # would otherwise inflate the start-up that steady state subtracts
    cold = bench_pipeline(args, Case("start-up", 1, 1, 1, 1), args.output_dir / "startup-cold")
    startup = bench_pipeline(args, Case("start-up", 1, 1, 1, 1), args.output_dir / "startup")
    pipeline = [bench_pipeline(args, case, args.output_dir / case.name) for case in cases]
    b_startup, bare = bench_vllm(args, cases)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("default"))
    hf_prompts = [get_prompt("boxed").render(q.question, tok) for q in load_dataset("gsm8k", limit=args.hf_questions)]
    c_wall, c_tokens = bench_transformers(args, hf_prompts)
    graded_dir = args.output_dir / cases[0].name
    cached_rate, uncached_rate, num_graded, comparisons = bench_grading(graded_dir)
    print(f"\nsampling: SmolLM2-135M bf16, T={TEMPERATURE}, vLLM CPU thread binding {args.cpu_threads_bind!r}; (a) batches of "
          f"{args.requests_per_batch} requests, batches in flight per engine: " + ", ".join(f"{c.name} {c.batches_in_flight}" for c in cases))
    print(f"Ray worker niceness {os.environ['RAY_worker_niceness']} (this process: {os.nice(0)})")
    print(f"(a) start-up only: a 1 x 1 x 1-token evaluate run in {startup.wall_s:.1f} s (first, cold: {cold.wall_s:.1f} s);  (b) vLLM import + engine start {b_startup:.1f} s")
    for case, a, b in zip(cases, pipeline, bare):
        a_e2e, b_e2e = a.tokens / a.wall_s, b.tokens / (b_startup + b.wall_s)
        a_steady, b_steady = a.tokens / (a.wall_s - startup.wall_s), b.tokens / b.wall_s
        print(f"\n[{case.name}] {case.questions} GSM8K questions x {case.samples} samples x <= {case.max_tokens} tokens")
        print(f"(a) evaluate pipeline   {a.tokens:>8} tokens in {a.wall_s:7.1f} s  {a_e2e:8.1f} tokens/s end to end  {a_steady:8.1f} steady  ({spread(a.lengths)})")
        print(f"(b) bare vllm generate  {b.tokens:>8} tokens in {b_startup + b.wall_s:7.1f} s  {b_e2e:8.1f} tokens/s end to end  {b_steady:8.1f} steady  ({spread(b.lengths)})")
        print(f"a/b = {a_e2e / b_e2e:.2f} end to end, {a_steady / b_steady:.2f} at steady state (tokens/s ratios)")
    b0 = bare[0].tokens / (b_startup + bare[0].wall_s)
    c = c_tokens / c_wall
    print(f"\n(c) transformers        {c_tokens:>8} tokens in {c_wall:7.1f} s  {c:8.1f} tokens/s  ({args.hf_questions} questions x {args.hf_samples} samples)")
    print(f"b/c = {b0 / c:.2f} ({cases[0].name}, end to end)   (b generate-only)/c = {bare[0].tokens / bare[0].wall_s / c:.2f}")
    print(f"grading {num_graded} samples ({cases[0].name}): {cached_rate:.0f} samples/s with the answer cache ({comparisons[0]} comparisons), "
          f"{uncached_rate:.0f} samples/s without ({comparisons[1]} comparisons): {cached_rate / uncached_rate:.1f}x")


if __name__ == "__main__":
    main()
