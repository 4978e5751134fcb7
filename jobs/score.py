"""Judge every stored sample of an evaluation once: per-sample scores for select@k's score rules.

Reads:  an evaluation's ``output_dir`` (``samples/``, ``config.yaml`` for its questions, ``questions.json``) and a
        judge behind any OpenAI-compatible API (``judge.base_url``: the OpenAI API, vLLM's server, this project's
        Serve app), or the project's vLLM model served by the job itself (``local_server``).
Writes: ``output_dir/scores/`` (``lib.scoring``: one Parquet row per judged sample with its score in [0, 1],
        status, judge reply, tokens, cost; ``cache.sqlite``; ``config.yaml``; ``summary.json``).

Pipeline (Ray Data): the samples not yet scored -> a pool of async client actors (``lib.scoring.JudgeAndStore``),
all asking one governor actor for rate limits and budget -> one atomic part per batch -> counts on the driver.
Then ``python -m jobs.evaluate ... stage=metrics selection=[majority,verifier_weighted]`` measures select@k
of the score rules (``lib.selection.NEEDS_SCORES``) from the stored samples and scores.

Resume: rerun with the same ``output_dir``: only samples without a done score row are judged (a failed
request is recorded with its error, counted, and judged again by the next run); every successful response
is in ``scores/cache.sqlite``, so no request that succeeded is sent twice.

Run locally:   python -m jobs.score --config jobs/configs/score_tiny.yaml output_dir=outputs/evaluate_tiny
On a cluster:  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
                   python -m jobs.score --config jobs/configs/score_tiny.yaml output_dir=/mnt/runs/eval judge.base_url=...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from lib import cli
from lib.config import ConfigError, JobSummary, StrictModel, dump_config
from lib.data import DataError, stored_evaluation_questions
from lib.openai_server import LocalOpenAIServer, LocalServerConfig, check_one_endpoint
from lib.output_dir import hold_output_dir
from lib.progress import Progress
from lib.ray_runtime import init_ray
from lib.sample_store import SampleStore
from lib.scoring import JUDGE_PROMPT, SCORES_DIR, STATUSES, JudgeAndStore, ScoreStore, pending_rows
from lib.teacher import RequestCache, TeacherError, TeacherSettings, preflight

log = logging.getLogger("mathray.score")


class ScoreResources(StrictModel):
    num_clients: int = Field(1, ge=1, description="client actors (each runs judge.max_concurrency requests)")
    cpus_per_client: float = Field(0.25, ge=0, description="a client mostly waits on the judge")
    rows_per_batch: int = Field(64, ge=1, description="samples per batch (one scores part each)")


class ScoreConfig(StrictModel):
    run_only_keys = frozenset({"output_dir", "resources", "judge.api_key_env", "budget_usd", "max_error_fraction"})
    output_dir: str = Field("outputs/evaluate_tiny", description="the evaluation's output directory (reads samples/, writes scores/)")
    judge: TeacherSettings = Field(default_factory=lambda: TeacherSettings(temperature=0.0, max_tokens=256))
    local_server: LocalServerConfig | None = Field(None, description="start vLLM's OpenAI server as the judge")
    samples_per_question: int | None = Field(None, ge=1, description="judge sample_idx below this only (None: all stored)")
    budget_usd: float | None = Field(None, ge=0, description="stop before spending more (earlier runs included)")
    max_error_fraction: float = Field(0.05, ge=0, le=1, description="fail when more judged samples than this fail")
    seed: int = 0
    resources: ScoreResources = Field(default_factory=ScoreResources)

    @model_validator(mode="after")
    def _judge_target(self) -> ScoreConfig:
        check_one_endpoint(self.local_server, self.judge.base_url, "judge", "judge")
        return self


def evaluation_questions(output_dir: Path) -> list:
    """The questions of the evaluation stored in ``output_dir`` (from its config.yaml), checked against the
    content hashes its samples were stored with."""
    path = output_dir / "config.yaml"
    if not SampleStore(output_dir).parts("samples") or not path.is_file():
        raise ConfigError(f"output_dir: {output_dir} holds no evaluation samples (samples/ and config.yaml); "
                          "run python -m jobs.evaluate first")
    try:
        questions = stored_evaluation_questions(output_dir)
    except (DataError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the evaluation's questions: {exc}") from None
    SampleStore(output_dir).check_questions(questions)
    return questions


def run_stage(config: ScoreConfig, judge: TeacherSettings, rows: list[dict], output_dir: Path) -> dict:
    """Judge ``rows`` through the client actors; returns the summed counts of this run."""
    import ray

    from lib.teacher import Governor

    cache = RequestCache(output_dir / SCORES_DIR / "cache.sqlite")
    already_spent = cache.total_cost()
    governor = ray.remote(num_cpus=0)(Governor).remote(judge.requests_per_minute, judge.tokens_per_minute,
                                                        config.budget_usd, already_spent)
    ray.data.DataContext.get_current().enable_progress_bars = False
    res = config.resources
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // res.rows_per_batch)))
    key = os.environ.get(judge.api_key_env)  # to the actors as a SecretStr argument, never an env var Ray logs
    ds = ds.map_batches(
        JudgeAndStore,
        fn_constructor_kwargs={"judge": judge.model_dump(), "output_dir": str(output_dir.resolve()),
                               "cache_path": str(cache.path.resolve()), "governor": governor,
                               "api_key": SecretStr(key) if key else None, "seed": config.seed},
        batch_size=res.rows_per_batch, compute=ray.data.ActorPoolStrategy(size=res.num_clients),
        num_cpus=res.cpus_per_client,
    )
    totals: dict[str, float] = {}
    progress = Progress("score", total=len(rows), unit="samples")
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0):
        for column in batch.columns:
            totals[column] = totals.get(column, 0) + float(batch[column].sum())
        progress.update(int(batch["num_rows"].sum()), failed=int(batch["failed"].sum()))
    progress.finish()
    ray.kill(governor)
    return {**totals, "already_spent": already_spent}


class ScoreSummary(JobSummary):
    """What ``run`` returns, written as ``output_dir/scores/summary.json``."""

    samples_stored: int
    judged_this_run: int
    requests_sent: int
    cached: int
    failed_this_run: int
    cost_this_run_usd: float
    status_counts: dict[str, int]
    seconds: float


def run(config: ScoreConfig) -> ScoreSummary:
    """Judge the stored samples of ``config.output_dir`` not judged yet (the module docstring)."""
    output_dir = Path(config.output_dir)
    questions = evaluation_questions(output_dir)
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.enter_context(hold_output_dir(output_dir, "score"))  # no evaluation or score run at the same time
        store = ScoreStore(output_dir)
        store.clean()
        samples = SampleStore(output_dir).read("samples", ["question_id", "sample_idx", "text", "extracted"])
        rows = pending_rows(samples, {q.id: q.question for q in questions}, store.done(), config.samples_per_question)
        log.info("%d samples stored, %d to judge", samples.num_rows, len(rows))
        totals = {}
        if rows:
            if config.local_server is not None:
                server = stack.enter_context(LocalOpenAIServer(config.local_server,
                                                               log_path=output_dir / SCORES_DIR / "judge_server.log"))
                judge = config.judge.model_copy(update={"base_url": server.base_url, "model": config.local_server.served_name})
            else:
                judge = config.judge
            asyncio.run(preflight(judge))
            (output_dir / SCORES_DIR).mkdir(exist_ok=True)
            dump_config(config, output_dir / SCORES_DIR / "config.yaml", {"judge": judge.model_dump(), "prompt": JUDGE_PROMPT})
            init_ray()
            totals = run_stage(config, judge, rows, output_dir)
    counts = store.status_counts()
    judged = sum(counts.values())
    summary = ScoreSummary(samples_stored=samples.num_rows, judged_this_run=int(totals.get("num_rows", 0)),
                           requests_sent=int(totals.get("requests", 0)), cached=int(totals.get("cached", 0)),
                           failed_this_run=int(totals.get("failed", 0)) + int(totals.get("budget_refused", 0)),
                           cost_this_run_usd=float(totals.get("cost", 0.0)), status_counts=counts,
                           seconds=round(time.monotonic() - start, 1))
    (output_dir / SCORES_DIR).mkdir(exist_ok=True)
    summary.write(output_dir / SCORES_DIR)
    bad = counts["failed"] + counts["budget"]
    if judged and bad / judged > config.max_error_fraction:
        raise RuntimeError(f"{bad} of {judged} samples have no judge score (failed or refused by the budget; "
                           f"> max_error_fraction {config.max_error_fraction}); rerun to judge them again")
    return summary


def main(argv: list[str] | None = None) -> ScoreSummary:
    return cli.main(argv, ScoreConfig, run, __doc__, "e.g. output_dir=outputs/evaluate_tiny")


def show(summary: ScoreSummary) -> str:
    counts = summary.status_counts
    return "\n".join([
        f"samples stored {summary.samples_stored}, judged this run {summary.judged_this_run} "
        f"({summary.requests_sent} requests sent, {summary.cached} from the cache, "
        f"{summary.failed_this_run} failed), cost ${summary.cost_this_run_usd:.4f}, {summary.seconds} s",
        "scores: " + ", ".join(f"{s} {counts[s]}" for s in STATUSES),
    ])


if __name__ == "__main__":
    cli.entry(main, show=show, errors=(TeacherError,))
