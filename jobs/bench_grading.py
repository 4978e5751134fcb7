"""Benchmark: the grading and storage side of the evaluate pipeline at scale (millions of samples).

A stand-in engine stage (``StandInEngine``: no model; it only replays stored real samples) emits sample rows
as fast as Ray Data lets it, in the shape and batch size of ``lib.sampling.AsyncVLLMSampler``'s output:
``--questions`` x ``--samples-per-question`` samples, each question's texts drawn (seeded) from the real
samples of one question of ``--source`` (an evaluate output_dir holding real samples, e.g. the one
``python -m jobs.bench_sampling`` leaves), with that question's gold answer. The rows then go through the
REAL stages of ``jobs.evaluate``: request rows from ``lib.sample_store.plan_requests``, grading in
``lib.sample_store.GradeAndStore`` actors (extraction, math-verify in a killable worker process, the answer
cache) and atomic Parquet parts; then ``python -m jobs.evaluate stage=metrics`` over the stored rows.

Prints: samples/s (wall) and per grader CPU-second (CPU time of the grader actors and their worker
processes, from /proc), peak RSS of the driver, the stand-in, each grader actor and its worker, sampled
every ``--interval`` s over the run (with the RSS at 10% / 50% / 100% of the rows, to show it does not grow
with rows), the time of stage=metrics, and the grader CPUs a GPU node needs at ``--engine-samples-per-s``.

Run: python -m jobs.bench_sampling --cases default    # once: real samples in outputs/bench_sampling/default
     python -m jobs.bench_grading [--questions 977 --samples-per-question 1024 --num-graders 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path

from lib.progress import Progress, setup_logging
from lib.sample_store import GradeAndStore, SampleStore, plan_requests
from lib.sampling import SAMPLE_COLUMNS

log = logging.getLogger("mathray.bench_grading")
DATASET = "scale"  # the synthetic questions' file stem: their ids are scale/<i>


class StandInEngine:
    """Stand-in for the vLLM sampling stage: request rows in, one row per sample out (``SAMPLE_COLUMNS``), the
    text of each drawn from the stored real samples of the request's source question; no model runs."""

    def __init__(self, pool: list[dict]):
        self.pool = pool  # per source question: {"texts": [...], "num_tokens": [...], "finish_reasons": [...]}

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {c: [] for c in SAMPLE_COLUMNS}
        for i in range(len(batch["question_id"])):
            qid = str(batch["question_id"][i])
            number = int(qid.rsplit("/", 1)[1])
            source = self.pool[number % len(self.pool)]
            for sample_idx in batch["sample_indices"][i]:
                j = random.Random(f"{qid}#{int(sample_idx)}").randrange(len(source["texts"]))
                for key, value in (("question_id", qid), ("dataset", str(batch["dataset"][i])), ("kind", str(batch["kind"][i])),
                                   ("sample_idx", int(sample_idx)), ("gold", str(batch["gold"][i])), ("text", source["texts"][j]),
                                   ("num_tokens", source["num_tokens"][j]), ("finish_reason", source["finish_reasons"][j]),
                                   ("error", None)):
                    out[key].append(value)
        return out


def load_pool(source: Path) -> tuple[list[dict], list[dict]]:
    """Real samples of ``source`` grouped by question, and those questions (text, gold)."""
    if not SampleStore(source).parts("samples"):
        raise SystemExit(f"error: --source {source} holds no samples; run `python -m jobs.bench_sampling --cases default` "
                         "first (it leaves real samples in outputs/bench_sampling/default) or pass an evaluate output_dir")
    table = SampleStore(source).read("samples", ["question_id", "text", "num_tokens", "finish_reason", "gold"])
    by_question: dict[str, dict] = defaultdict(lambda: {"texts": [], "num_tokens": [], "finish_reasons": []})
    golds = {}
    for qid, text, tokens, finish, gold in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        if finish == "error":
            continue
        entry = by_question[qid]
        entry["texts"].append(text)
        entry["num_tokens"].append(tokens)
        entry["finish_reasons"].append(finish)
        golds[qid] = gold
    ids = sorted(by_question)
    return [by_question[q] for q in ids], [{"id": q, "gold": golds[q]} for q in ids]


def write_questions(path: Path, num_questions: int, sources: list[dict]) -> list:
    """The synthetic questions as a user JSONL file (evaluate reads it for stage=metrics); returns them loaded."""
    from lib.data import load_dataset

    with path.open("w") as f:
        for i in range(num_questions):
            src = sources[i % len(sources)]
            f.write(json.dumps({"id": i, "question": f"stand-in question {i} (samples of {src['id']})", "answer": src["gold"]}) + "\n")
    return load_dataset(str(path), columns={"question": "question", "answer": "answer", "id": "id"})


class Monitor(threading.Thread):
    """Samples RSS and CPU time of this driver and its descendant processes (its local Ray's workers) every
    ``interval`` s, grouped by role: driver, stand-in, grader (actor), grader-worker (math-verify process)."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.interval = psutil, interval
        self.me = psutil.Process()
        self.peak: dict[str, int] = defaultdict(int)  # role -> peak RSS of one process
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, last seen user+system s)
        self.timeline: list[tuple[float, dict[str, int]]] = []  # (rows done, role -> max RSS now)
        self.rows_done = 0
        self.phase = ""  # appended to the driver's role: the metrics stage runs in the driver
        self.stop = threading.Event()

    def role(self, proc) -> str | None:
        if proc.pid == self.me.pid:
            return "driver" + self.phase
        cmd = " ".join(proc.cmdline())
        if "StandInEngine" in cmd:
            return "stand-in"
        if "GradeAndStore" in cmd:
            return "grader"
        parent = proc.parent()
        if parent is not None and "GradeAndStore" in " ".join(parent.cmdline()):
            return "grader-worker"
        return None

    def sample(self) -> None:
        now: dict[str, int] = defaultdict(int)
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                role = self.role(proc)
                if role is None:
                    continue
                rss = proc.memory_info().rss
                times = proc.cpu_times()
                self.cpu[proc.pid] = (role, times.user + times.system)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            now[role] = max(now[role], rss)
            self.peak[role] = max(self.peak[role], rss)
        self.timeline.append((self.rows_done, dict(now)))

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def cpu_seconds(self, *roles: str) -> float:
        return sum(t for role, t in self.cpu.values() if role in roles)

    def at_fraction(self, fraction: float, total: int) -> dict[str, int]:
        for done, rss in self.timeline:
            if done >= fraction * total:
                return rss
        return self.timeline[-1][1] if self.timeline else {}


def run_grading_stage(args, questions: list, pool: list[dict], output_dir: Path, monitor: Monitor) -> float:
    """The stand-in engine -> GradeAndStore (as jobs.evaluate wires it) -> summaries on the driver; returns wall s."""
    import ray

    requests = plan_requests(questions, {}, {}, samples_per_question=args.samples_per_question,
                             samples_per_request=args.samples_per_request, greedy=False)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items(requests, override_num_blocks=math.ceil(len(requests) / args.requests_per_batch))
    ds = ds.map_batches(StandInEngine, fn_constructor_kwargs={"pool": pool}, batch_size=args.requests_per_batch,
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=args.stand_in_cpus)
    ds = ds.map_batches(GradeAndStore, fn_constructor_kwargs={"output_dir": str(output_dir.resolve()), "timeout_s": args.grading_timeout_s},
                        batch_size=None, compute=ray.data.ActorPoolStrategy(size=args.num_graders), num_cpus=args.cpus_per_grader)
    total = len(questions) * args.samples_per_question
    progress = Progress("bench_grading", total=total, unit="samples", interval_s=30)
    start = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0):
        done = int(batch["num_samples"].sum())
        monitor.rows_done += done
        progress.update(done, correct=int(batch["num_correct"].sum()))
    wall = time.perf_counter() - start
    progress.finish()
    monitor.sample()  # the grader processes' final CPU times, before Ray ends them
    ray.shutdown()
    return wall


def count_comparisons(output_dir: Path) -> tuple[int, int]:
    """Stored rows, and their distinct (question, normalized answer) pairs with a gold answer: the comparisons
    the graders' answer cache (keyed by question and answer) let through."""
    from lib.grading import normalize_answer

    table = SampleStore(output_dir).read("samples", ["question_id", "sample_idx", "extracted", "gold"])
    pairs = {(q, normalize_answer(e)) for q, e, g in zip(*(table.column(c).to_pylist() for c in ("question_id", "extracted", "gold")))
             if e is not None and str(g).strip()}
    return table.num_rows, len(pairs)


def run_metrics_stage(args, questions_file: Path, output_dir: Path) -> float:
    from jobs.evaluate import main as evaluate

    start = time.perf_counter()
    evaluate(["--config", "jobs/configs/evaluate_tiny.yaml", "stage=metrics", f"output_dir={output_dir}", "limit=null",
              f"samples_per_question={args.samples_per_question}", "greedy=false",
              f"datasets=[{{path: {questions_file}, columns: {{question: question, answer: answer, id: id}}}}]"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("outputs/bench_sampling/default"), help="evaluate output_dir with real samples")
    parser.add_argument("--questions", type=int, default=977, help="synthetic questions (977 x 1024 = 1,000,448 samples)")
    parser.add_argument("--samples-per-question", type=int, default=1024)
    parser.add_argument("--samples-per-request", type=int, default=64, help="as resources.samples_per_request")
    parser.add_argument("--requests-per-batch", type=int, default=8, help="as resources.requests_per_batch")
    parser.add_argument("--num-graders", type=int, default=1)
    parser.add_argument("--cpus-per-grader", type=float, default=0.5)
    parser.add_argument("--stand-in-cpus", type=float, default=0.5)
    parser.add_argument("--grading-timeout-s", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS/CPU samples")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench_grading"), help="removed and rewritten")
    parser.add_argument("--engine-samples-per-s", type=float, default=None,
                        help="samples/s one GPU node's engines produce (README: 8 x H100, 7B); prints the grader CPUs it needs")
    args = parser.parse_args()
    setup_logging()
    pool, sources = load_pool(args.source)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    args.output_dir.mkdir(parents=True)
    questions_file = args.output_dir.parent / f"{DATASET}.jsonl"  # outside output_dir: evaluate owns that directory
    questions = write_questions(questions_file, args.questions, sources)
    total = args.questions * args.samples_per_question
    log.info("%d samples: %d stand-in questions over %d real source questions (%d real samples)", total, args.questions,
             len(pool), sum(len(p["texts"]) for p in pool))
    monitor = Monitor(args.interval)
    monitor.start()
    wall = run_grading_stage(args, questions, pool, args.output_dir, monitor)
    num_rows, comparisons = count_comparisons(args.output_dir)
    monitor.phase = " (stage=metrics)"
    metrics_s = run_metrics_stage(args, questions_file, args.output_dir)
    monitor.stop.set()
    grader_cpu = monitor.cpu_seconds("grader", "grader-worker")
    mib = lambda b: b / 2**20  # noqa: E731
    print(f"\ngrading/storage at scale: {num_rows:,} samples stored ({total:,} emitted), {args.questions} questions x "
          f"{args.samples_per_question}, {args.num_graders} grader(s) x {args.cpus_per_grader} CPU, batches of "
          f"{args.requests_per_batch} x {args.samples_per_request} samples, {len(SampleStore(args.output_dir).parts('samples'))} Parquet parts")
    print(f"wall {wall:.0f} s: {total / wall:.0f} samples/s; grader CPU time {grader_cpu:.0f} s (actors + math-verify "
          f"workers): {total / grader_cpu:.0f} samples per grader CPU-second")
    print(f"answer cache: {comparisons:,} distinct (question, answer) pairs = math-verify comparisons, "
          f"{comparisons / num_rows:.1%} of the rows; the rest were cache hits")
    print("peak RSS (MiB, one process): " + ", ".join(f"{role} {mib(monitor.peak[role]):.0f}" for role in
                                                      ("driver", "stand-in", "grader", "grader-worker", "driver (stage=metrics)")))
    for fraction in (0.1, 0.5, 1.0):
        rss = monitor.at_fraction(fraction, total)
        print(f"  RSS at {fraction:>4.0%} of rows: " + ", ".join(f"{role} {mib(v):.0f}" for role, v in sorted(rss.items())))
    print(f"stage=metrics over {num_rows:,} rows: {metrics_s:.1f} s (python -m jobs.evaluate stage=metrics, process start excluded)")
    if args.engine_samples_per_s:
        per_cpu = total / grader_cpu
        print(f"a node producing {args.engine_samples_per_s:.0f} samples/s needs {args.engine_samples_per_s / per_cpu:.1f} grader CPUs "
              f"at {per_cpu:.0f} samples per grader CPU-second")


if __name__ == "__main__":
    main()
