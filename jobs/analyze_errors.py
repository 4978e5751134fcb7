"""Calculation vs reasoning errors in the incorrect samples of an evaluation (the paper's error analysis).

Reads:  an output directory of ``jobs.evaluate`` (``samples/`` and ``config.yaml``).
Writes: ``output_dir/`` (default ``EVAL_DIR/error_analysis``) with ``result.json``: per method, the number of
        incorrect samples labelled calculation / reasoning, and rates over all samples of the run, so runs
        of different sizes compare; ``labels.jsonl`` (one line per labelled sample, with the wrong equations
        or the judge's reply); ``judge_cache.sqlite`` when a judge is used; ``summary.json`` (result.json plus
        output_dir: what ``run`` returns).

Two methods, each named in every output:
- ``arithmetic`` (judge-free, default): re-evaluates every explicit ``expression = number`` statement of the
  solution (``lib.error_analysis``). A sample with a wrong one is a calculation error; the rest are "no
  arithmetic slip found", which is an upper bound on reasoning errors, not a judgement.
- ``judge`` (optional): any OpenAI-compatible model labels each incorrect sample (up to ``judge_max_samples``
  per run, a seeded choice) as calculation or reasoning; rates are scaled from the judged share. Requests go
  through ``lib.teacher`` (retries, cache, budget); a failed request is counted as unlabelled, never fatal.

From Python: ``run(ErrorAnalysisConfig(eval_dir=...))`` returns the :class:`ErrorAnalysisSummary`.
Run locally:   python -m jobs.analyze_errors --eval-dir outputs/evaluate_tiny [key=value ...]
               (= --config FILE eval_dir=outputs/evaluate_tiny; ``--output-dir`` = ``output_dir=``)
On a cluster:  part of jobs.pipeline; or ray job submit ... -- python -m jobs.analyze_errors --eval-dir DIR
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path
from typing import Any

from pydantic import Field

from lib import cli
from lib.config import ConfigError, JobSummary, StrictModel
from lib.data import stored_evaluation_questions
from lib.error_analysis import ARITHMETIC_METHOD, JUDGE_METHOD, arithmetic_label, find_equations, judge_messages, parse_judge_label, summarize
from lib.progress import Progress
from lib.teacher import BUDGET_EXHAUSTED, Governor, RequestCache, TeacherClient, TeacherError, TeacherSettings, preflight
from lib.schemas import QUESTION_ID

log = logging.getLogger("mathray.analyze_errors")


class ErrorAnalysisConfig(StrictModel):
    """Label incorrect samples as calculation vs reasoning errors."""

    # What changes a run's meaning: not where it reads and writes (the pipeline keeps each analysis in its
    # evaluation's directory), nor the name of the judge's key variable.
    run_only_keys = frozenset({"eval_dir", "output_dir", "judge.api_key_env"})

    eval_dir: str | None = Field(None, description="an output directory of jobs.evaluate (required; --eval-dir)")
    output_dir: str | None = Field(None, description="None: EVAL_DIR/error_analysis (--output-dir)")
    arithmetic: bool = Field(True, description="judge-free: re-evaluate the solutions' `expression = number` statements")
    judge: TeacherSettings | None = Field(None, description="an OpenAI-compatible model that labels each incorrect sample")
    judge_max_samples: int = Field(64, ge=1, description="incorrect samples per run sent to the judge (seeded choice)")
    judge_budget_usd: float | None = Field(None, ge=0, description="per run")
    seed: int = 0


def incorrect_samples(eval_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The run's incorrect samples (question text added: the questions its recorded config names) and the
    number of all its samples."""
    from lib.sample_store import SampleStore

    table = SampleStore(eval_dir).read("samples", [QUESTION_ID, "sample_idx", "text", "status", "extracted", "gold"])
    rows = table.to_pylist()
    questions = {q.id: q.question for q in stored_evaluation_questions(eval_dir)}
    wrong = [{**r, "question": questions.get(r[QUESTION_ID], "")} for r in rows if r["status"] == "incorrect"]
    wrong.sort(key=lambda r: (r[QUESTION_ID], r["sample_idx"]))
    return wrong, len(rows)


async def judge_labels(samples: list[dict[str, Any]], settings: TeacherSettings, cache: RequestCache,
                       budget_usd: float | None) -> list[dict[str, Any]]:
    client = TeacherClient(settings, Governor(settings.requests_per_minute, settings.tokens_per_minute, budget_usd,
                                              cache.total_cost()), cache)
    progress = Progress("judge", len(samples), unit="samples")

    async def one(sample: dict[str, Any]) -> dict[str, Any]:
        reply = await client.complete(judge_messages(sample["question"], sample["gold"] or "", sample["text"]),
                                      stage="judge")
        progress.update(1)
        label = parse_judge_label(reply.text) if reply.ok else None
        return {QUESTION_ID: sample[QUESTION_ID], "sample_idx": sample["sample_idx"], "label": label,
                "reply": reply.text, "error": reply.error, "cost": reply.cost}

    try:
        return list(await asyncio.gather(*(one(s) for s in samples)))
    finally:
        progress.finish()
        await client.close()


class ErrorAnalysisSummary(JobSummary):
    """What ``run`` returns, written as ``summary.json`` (``result.json``, read by the pipeline's report, holds the
    same without ``output_dir``)."""

    eval_dir: str
    output_dir: str
    num_samples: int
    num_incorrect: int
    methods: dict[str, dict[str, Any]] = Field(description="per method: counts, rates over all samples, its description")


def run(config: ErrorAnalysisConfig) -> ErrorAnalysisSummary:
    """Label the incorrect samples of ``config.eval_dir`` (the module docstring); a directory that is not an
    evaluation's: ``ConfigError``; an unreachable judge: ``TeacherError``, before any sample is sent."""
    if config.eval_dir is None:
        raise ConfigError("eval_dir (--eval-dir): required: an output directory of jobs.evaluate")
    eval_dir = Path(config.eval_dir)
    if not (eval_dir / "samples").is_dir() or not (eval_dir / "config.yaml").is_file():
        raise ConfigError(f"eval_dir: --eval-dir {eval_dir}: not an output directory of jobs.evaluate (no samples/ or config.yaml)")
    output_dir = Path(config.output_dir) if config.output_dir else eval_dir / "error_analysis"
    result = analyze_run(eval_dir, config, output_dir)
    summary = ErrorAnalysisSummary(output_dir=str(output_dir), **result)
    summary.write(output_dir)
    return summary


def analyze_run(eval_dir: Path, config: ErrorAnalysisConfig, output_dir: Path | None = None) -> dict[str, Any]:
    output_dir = output_dir or eval_dir / "error_analysis"
    output_dir.mkdir(parents=True, exist_ok=True)
    wrong, num_samples = incorrect_samples(eval_dir)
    result: dict[str, Any] = {"eval_dir": str(eval_dir), "num_samples": num_samples, "num_incorrect": len(wrong), "methods": {}}
    lines = []
    if config.arithmetic:
        labels = []
        for sample in wrong:
            label = arithmetic_label(sample["text"])
            labels.append(label)
            bad = [e.text for e in find_equations(sample["text"]) if not e.ok]
            lines.append({"method": "arithmetic", QUESTION_ID: sample[QUESTION_ID], "sample_idx": sample["sample_idx"],
                          "label": label, "wrong_equations": bad})
        result["methods"]["arithmetic"] = {"method": ARITHMETIC_METHOD, "num_labelled_of_incorrect": len(wrong),
                                           **summarize(labels, num_samples)}
    if config.judge is not None and wrong:
        asyncio.run(preflight(config.judge))  # a bad key or URL is named before any sample is sent
        chosen = sorted(random.Random(config.seed).sample(range(len(wrong)), min(len(wrong), config.judge_max_samples)))
        judged = asyncio.run(judge_labels([wrong[i] for i in chosen], config.judge,
                                          RequestCache(output_dir / "judge_cache.sqlite"), config.judge_budget_usd))
        labels = [j["label"] for j in judged]
        summary = summarize(labels, num_samples)
        scale = len(wrong) / len(judged)  # the judged samples stand for all incorrect ones
        summary["rates"] = {k: v * scale for k, v in summary["rates"].items()}
        result["methods"]["judge"] = {
            "method": JUDGE_METHOD, "model": config.judge.model, "base_url": config.judge.base_url,
            "num_judged": len(judged), "num_failed": sum(j["error"] is not None for j in judged),
            "budget_exhausted": sum(j["error"] == BUDGET_EXHAUSTED for j in judged),
            "cost_usd": sum(j["cost"] for j in judged), "rates_scaled_from_judged": scale != 1, **summary}
        lines += [{"method": "judge", **j} for j in judged]
    (output_dir / "labels.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    (output_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> ErrorAnalysisSummary:
    return cli.main(argv, ErrorAnalysisConfig, run, __doc__, "e.g. judge.base_url=http://... judge.model=gpt-4o judge_max_samples=32",
                    flags={"--eval-dir": ("eval_dir", "an output directory of jobs.evaluate"),
                           "--output-dir": ("output_dir", "default: EVAL_DIR/error_analysis")})


def show(summary: ErrorAnalysisSummary) -> str:
    return "\n".join(f"{name}: {m['counts']} of {summary.num_incorrect} incorrect / {summary.num_samples} samples; rates {m['rates']}"
                     for name, m in summary.methods.items())


if __name__ == "__main__":
    cli.entry(main, show=show, errors=(TeacherError,))
