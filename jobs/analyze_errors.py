"""Calculation vs reasoning errors in the incorrect samples of an evaluation (the paper's error analysis).

Reads:  an output directory of ``jobs.evaluate`` (``samples/`` and ``config.yaml``).
Writes: ``output_dir/`` (default ``EVAL_DIR/error_analysis``) with ``result.json``: per method, the number of
        incorrect samples labelled calculation / reasoning, and rates over all samples of the run, so runs
        of different sizes compare; ``labels.jsonl`` (one line per labelled sample, with the wrong equations
        or the judge's reply); ``judge_cache.sqlite`` when a judge is used.

Two methods, each named in every output:
- ``arithmetic`` (judge-free, default): re-evaluates every explicit ``expression = number`` statement of the
  solution (``lib.error_analysis``). A sample with a wrong one is a calculation error; the rest are "no
  arithmetic slip found", which is an upper bound on reasoning errors, not a judgement.
- ``judge`` (optional): any OpenAI-compatible model labels each incorrect sample (up to ``judge_max_samples``
  per run, a seeded choice) as calculation or reasoning; rates are scaled from the judged share. Requests go
  through ``lib.teacher`` (retries, cache, budget); a failed request is counted as unlabelled, never fatal.

Run locally:   python -m jobs.analyze_errors --eval-dir outputs/evaluate_tiny [key=value ...]
On a cluster:  part of jobs.pipeline; or ray job submit ... -- python -m jobs.analyze_errors --eval-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from lib.config import ConfigError, StrictModel, load_config
from lib.error_analysis import ARITHMETIC_METHOD, JUDGE_METHOD, arithmetic_label, find_equations, judge_messages, parse_judge_label, summarize
from lib.progress import Progress, setup_logging
from lib.teacher import BUDGET_EXHAUSTED, Governor, RequestCache, TeacherClient, TeacherError, TeacherSettings, preflight

log = logging.getLogger("mathray.analyze_errors")


class ErrorAnalysisConfig(StrictModel):
    """Label incorrect samples as calculation vs reasoning errors."""

    arithmetic: bool = Field(True, description="judge-free: re-evaluate the solutions' `expression = number` statements")
    judge: TeacherSettings | None = Field(None, description="an OpenAI-compatible model that labels each incorrect sample")
    judge_max_samples: int = Field(64, ge=1, description="incorrect samples per run sent to the judge (seeded choice)")
    judge_budget_usd: float | None = Field(None, ge=0, description="per run")
    seed: int = 0


def incorrect_samples(eval_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The run's incorrect samples (question text added) and the number of all its samples."""
    from jobs.evaluate import EvaluateConfig, load_questions
    from lib.sample_store import SampleStore

    table = SampleStore(eval_dir).read("samples", ["question_id", "sample_idx", "text", "status", "extracted", "gold"])
    rows = table.to_pylist()
    saved = yaml.safe_load((eval_dir / "config.yaml").read_text())
    saved.pop("_provenance", None)
    questions = {q.id: q.question for q in load_questions(EvaluateConfig.model_validate(saved))}
    wrong = [{**r, "question": questions.get(r["question_id"], "")} for r in rows if r["status"] == "incorrect"]
    wrong.sort(key=lambda r: (r["question_id"], r["sample_idx"]))
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
        return {"question_id": sample["question_id"], "sample_idx": sample["sample_idx"], "label": label,
                "reply": reply.text, "error": reply.error, "cost": reply.cost}

    try:
        return list(await asyncio.gather(*(one(s) for s in samples)))
    finally:
        progress.finish()
        await client.close()


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
            lines.append({"method": "arithmetic", "question_id": sample["question_id"], "sample_idx": sample["sample_idx"],
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, required=True, help="an output directory of jobs.evaluate")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="e.g. judge.base_url=http://... judge.model=gpt-4o judge_max_samples=32")
    args = parser.parse_args(argv)
    setup_logging()
    if not (args.eval_dir / "samples").is_dir() or not (args.eval_dir / "config.yaml").is_file():
        raise ConfigError(f"--eval-dir {args.eval_dir}: not an output directory of jobs.evaluate (no samples/ or config.yaml)")
    config = load_config(ErrorAnalysisConfig, None, args.overrides)
    return analyze_run(args.eval_dir, config, args.output_dir)


if __name__ == "__main__":
    try:
        out = main()
        for name, m in out["methods"].items():
            print(f"{name}: {m['counts']} of {out['num_incorrect']} incorrect / {out['num_samples']} samples; rates {m['rates']}")
    except (ConfigError, TeacherError) as exc:
        raise SystemExit(f"error: {exc}") from None
