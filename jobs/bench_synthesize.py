"""Benchmark: the synthesis job's throughput against a plain sequential loop of client calls, and the
cost of a cached rerun.

Starts vLLM's OpenAI server with the default model once, then
  (a) runs ``jobs.synthesize`` (``--seeds`` GSM8K seeds x 1 question x ``--solutions`` solutions, no
      verification) into a fresh directory: requests/s and completion tokens/s of its request stage;
  (b) sends the same requests (the same messages and params, read back from (a)'s question rows) one
      at a time with the plain ``openai`` client: requests/s and tokens/s; prints the ratio a/b;
  (c) reruns (a) on its output directory: requests sent (must be 0) and wall time.

With ``--finalize-questions N`` it instead measures the driver-side finish at scale: N fabricated question
rows (4 kept solutions each, MinHash signatures computed in one process) written as Parquet parts, then
dedup + decontamination + dataset + data card (``lib.synthesis_output.select``, streaming): seconds,
questions/s and the process's peak RSS.

Run: python -m jobs.bench_synthesize [--seeds 16 --solutions 4 --max-tokens 256 --concurrency 16]
     python -m jobs.bench_synthesize --finalize-questions 50000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from lib.data import load_dataset
from lib.openai_server import LocalOpenAIServer, LocalServerConfig
from lib.progress import setup_logging
from lib.synthesis import question_messages, question_prompt_name, solution_messages
from lib.synthesis_output import read_questions
from lib.teacher import TeacherClient, TeacherSettings
from lib.schemas import QUESTION_ID

log = logging.getLogger("mathray.bench_synthesize")


def job_config(args, base_url: str, output_dir: Path):
    from jobs.synthesize import SynthesizeConfig
    from lib.config import updated

    return updated(SynthesizeConfig(), {
        "teacher.base_url": base_url, "teacher.model": "mathray-teacher", "output_dir": str(output_dir),
        "seed_limit": args.seeds, "stage.questions_per_seed": 1, "stage.solutions_per_question": args.solutions,
        "teacher.max_tokens": args.max_tokens, "stage.question_max_tokens": args.max_tokens,
        "teacher.max_concurrency": args.concurrency, "stage.filters.verify": False,
        "resources.seeds_per_batch": max(1, args.seeds // 4), "teacher.temperature": 0.7})  # 4 batches in flight


def the_same_requests(args, output_dir: Path) -> list[tuple[list[dict], dict]]:
    """(messages, params) of every request (a) sent: question prompts from the seeds, solution prompts
    from the questions (a) parsed; params as the job's client builds them."""
    settings = TeacherSettings(base_url="http://127.0.0.1", model="x", temperature=0.7, max_tokens=args.max_tokens)
    client = TeacherClient(settings)
    seeds = load_dataset("gsm8k", split="train", limit=args.seeds)
    requests = [(question_messages(s, question_prompt_name(s)), client.params(0, args.max_tokens)) for s in seeds]
    for row in read_questions(output_dir / "questions"):
        if row["question"] is not None:
            requests += [(solution_messages(row["question"]), client.params(j)) for j in range(args.solutions)]
    return requests


def sequential_loop(base_url: str, requests: list[tuple[list[dict], dict]]) -> tuple[float, int]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
    start, tokens = time.perf_counter(), 0
    for messages, params in requests:
        response = client.chat.completions.create(model="mathray-teacher", messages=messages, **params)
        tokens += response.usage.completion_tokens
    return time.perf_counter() - start, tokens


def bench_finalize(num_questions: int) -> None:
    import random
    import resource

    from lib.synthesis import minhash_signature
    from lib.synthesis_output import CardCounter, DatasetWriter, PartReader, build_test_index, select
    from lib.synthesis_stage import question_table

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    usage = json.dumps({"question": {"requests": 1, "cached": 0, "failed": 0, "budget_refused": 0, "prompt_tokens": 80,
                                     "completion_tokens": 60, "cost": 0.002}})
    with tempfile.TemporaryDirectory() as tmp:
        qdir = Path(tmp) / "questions"
        qdir.mkdir()
        start = time.perf_counter()
        for part in range(0, num_questions, 10_000):
            rows = []
            for i in range(part, min(part + 10_000, num_questions)):
                text = " ".join(rng.choice(vocab) for _ in range(40)) + " ?"
                sols = [{"index": j, "text": " ".join(rng.choice(vocab) for _ in range(120)) + f" \\boxed{{{i}}}",
                         "answer": str(i), "finish_reason": "stop", "prompt_tokens": 60, "completion_tokens": 150,
                         "cost": 0.005, "majority": True, "format": None, "verified": True, "keep": True} for j in range(4)]
                rows.append({QUESTION_ID: f"seed/{i // 16}/q{i % 16}", "seed_id": f"seed/{i // 16}", "seed_dataset": "gsm8k",
                             "question_prompt": "gsm8k_style_v1", "question": text, "status": "kept", "detail": None,
                             "label": str(i), "votes": 4, "agreement": 1.0, "solutions_json": json.dumps(sols),
                             "usage_json": usage, "errors_json": "[]", "signature": minhash_signature(text)})
            import pyarrow.parquet as pq

            pq.write_table(question_table(rows), qdir / f"part-{part // 10_000:06d}.parquet")
        made = time.perf_counter() - start
        start = time.perf_counter()
        index = build_test_index(13)
        indexed = time.perf_counter() - start
        start = time.perf_counter()
        counter, writer = CardCounter(verify=True), DatasetWriter(Path(tmp) / "data")
        outcome = select(PartReader(qdir), exact=True, near=True, near_threshold=0.8, num_perm=128, test_index=index,
                         teacher_model="bench", verify=True, counter=counter, sink=writer)
        writer.close()
        took = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nfinalize at scale: {num_questions} questions x 4 solutions (fabricated; 40-word questions, 120-word solutions)")
    print(f"fabricating the question parts (incl. MinHash): {made:.1f} s; test-set 13-gram index: {indexed:.1f} s")
    print(f"dedup + decontamination + dataset + data card: {took:.1f} s = {num_questions / took:,.0f} questions/s, "
          f"{outcome.num_rows:,} rows written, {len(outcome.duplicates)} duplicates, {len(outcome.contaminated)} contaminated")
    print(f"peak RSS of the process: {peak_mb:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--solutions", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--finalize-questions", type=int, default=0, help="measure the finish step at this scale instead")
    args = parser.parse_args()
    setup_logging()
    if args.finalize_questions:
        return bench_finalize(args.finalize_questions)
    from jobs.synthesize import run as synthesize

    with tempfile.TemporaryDirectory() as tmp, LocalOpenAIServer(LocalServerConfig(), log_path=Path(tmp) / "server.log") as server:
        out = Path(tmp) / "synth"
        synthesize(job_config(args, server.base_url, out))
        summary = json.loads((out / "summary.json").read_text())
        usage = json.loads((out / "data_card.json").read_text())["usage"]
        job_requests = summary["totals"]["requests"]
        job_tokens = sum(u["completion_tokens"] for u in usage.values())
        job_s = summary["stage_seconds"]

        requests = the_same_requests(args, out)
        assert len(requests) == job_requests, f"rebuilt {len(requests)} requests, the job sent {job_requests}"
        loop_s, loop_tokens = sequential_loop(server.base_url, requests)

        start = time.perf_counter()
        synthesize(job_config(args, server.base_url, out))
        rerun_s = time.perf_counter() - start
        rerun = json.loads((out / "summary.json").read_text())["totals"]

    a_rps, b_rps = job_requests / job_s, len(requests) / loop_s
    print(f"\nsynthesis benchmark: {args.seeds} GSM8K seeds x 1 question x {args.solutions} solutions, "
          f"max {args.max_tokens} tokens, default model on vLLM's OpenAI server (CPU)")
    print(f"(a) synthesize job, request stage:  {job_requests} requests in {job_s:.1f} s = {a_rps:.2f} req/s, "
          f"{job_tokens / job_s:.0f} completion tokens/s (concurrency {args.concurrency})")
    print(f"(b) sequential openai client loop:  {len(requests)} requests in {loop_s:.1f} s = {b_rps:.2f} req/s, "
          f"{loop_tokens / loop_s:.0f} completion tokens/s")
    print(f"ratio a/b: {a_rps / b_rps:.2f}x requests/s, {(job_tokens / job_s) / (loop_tokens / loop_s):.2f}x tokens/s")
    print(f"(c) cached rerun: {rerun['requests']:.0f} requests sent, {rerun['cached']:.0f} served from cache, "
          f"{rerun_s:.1f} s wall (Ray start and decontamination index included)")


if __name__ == "__main__":
    main()
