"""From the synthesis stage's question rows to the SFT dataset: global dedup, test-set decontamination,
the final Parquet rows, and the data card (row counts after every stage, removal reasons, tokens, cost).

Runs on the driver over ``questions/`` (one row per generated question, written as the stage streams).
Questions are processed in id order, so which of two duplicates survives does not depend on timing.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.data import dataset_names, load_dataset
from lib.synthesis import (
    SOLUTION_PROMPT_NAME,
    VERIFY_PROMPT_NAME,
    NearDuplicateIndex,
    NgramIndex,
    normalize_text,
)

log = logging.getLogger("mathray.synthesis")

DATA_COLUMNS = (
    "id", "seed_id", "source", "question", "solution", "answer", "agreement", "verified", "teacher_model",
    "question_prompt", "solution_prompt", "verify_prompt", "prompt_tokens", "completion_tokens", "cost_usd",
)
ROWS_PER_FILE = 100_000


def build_test_index(n: int = 13, datasets: list[str] | None = None) -> NgramIndex:
    """Word n-grams of every test set in the data registry (or of ``datasets``)."""
    index = NgramIndex(n)
    for name in datasets or dataset_names():
        try:
            questions = load_dataset(name, split="test")
        except Exception as exc:  # a registry dataset without a test split or file
            log.warning("decontamination: skipping %s (%s)", name, exc)
            continue
        for q in questions:
            index.add(q.id, q.question)
    return index


def write_parquet_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_questions(questions_dir: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for part in sorted(questions_dir.glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    rows.sort(key=lambda r: r["question_id"])
    return rows


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    contaminated: list[dict[str, Any]] = field(default_factory=list)


def select(questions: list[dict[str, Any]], *, exact: bool, near: bool, near_threshold: float, num_perm: int,
           test_index: NgramIndex | None, teacher_model: str, verify: bool) -> Outcome:
    """Dedup (exact, then near) and decontaminate the kept questions; explode kept solutions into rows."""
    out = Outcome()
    seen: dict[str, str] = {}
    near_index = NearDuplicateIndex(near_threshold, num_perm) if near else None
    for q in sorted(questions, key=lambda r: r["question_id"]):
        if q["status"] != "kept":
            continue
        qid, text = q["question_id"], q["question"]
        key = normalize_text(text)
        if exact and key in seen:
            out.duplicates.append({"question_id": qid, "duplicate_of": seen[key], "kind": "exact"})
            continue
        seen.setdefault(key, qid)
        if near_index is not None and (other := near_index.add(qid, q["signature"])) is not None:
            out.duplicates.append({"question_id": qid, "duplicate_of": other, "kind": "near"})
            continue
        kept = [s for s in json.loads(q["solutions_json"]) if s["keep"]]
        if test_index is not None:
            hit = test_index.match(text)
            where = "question"
            for sol in kept:
                if hit is not None:
                    break
                hit, where = test_index.match(sol["text"]), "solution"
            if hit is not None:
                test_id, shared, gram = hit
                ref = test_index.texts[test_index.ids.index(test_id)]
                out.contaminated.append({"question_id": qid, "field": where, "test_id": test_id, "shared_ngrams": shared,
                                         "example_ngram": gram, "question": text, "test_question": ref})
                continue
        for sol in kept:
            out.rows.append({
                "id": f"{qid}/s{sol['index']}", "seed_id": q["seed_id"], "source": q["seed_dataset"], "question": text,
                "solution": sol["text"], "answer": q["label"], "agreement": q["agreement"], "verified": sol["verified"],
                "teacher_model": teacher_model, "question_prompt": q["question_prompt"],
                "solution_prompt": SOLUTION_PROMPT_NAME, "verify_prompt": VERIFY_PROMPT_NAME if verify else None,
                "prompt_tokens": sol["prompt_tokens"], "completion_tokens": sol["completion_tokens"],
                "cost_usd": sol["cost"],
            })
    return out


def write_dataset(rows: list[dict[str, Any]], data_dir: Path) -> list[str]:
    import pyarrow as pa

    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("part-*.parquet"):
        old.unlink()
    schema = pa.schema([(c, pa.float64() if c in ("agreement", "cost_usd") else pa.int64() if c.endswith("_tokens")
                         else pa.bool_() if c == "verified" else pa.string()) for c in DATA_COLUMNS])
    files = []
    for start in range(0, max(len(rows), 1), ROWS_PER_FILE):
        path = data_dir / f"part-{start // ROWS_PER_FILE:05d}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows[start:start + ROWS_PER_FILE], schema=schema), path)
        files.append(path.name)
    return files


def usage_totals(questions: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: dict[str, Counter] = {}
    for q in questions:
        for stage, usage in json.loads(q["usage_json"]).items():
            totals.setdefault(stage, Counter()).update(usage)
    return {stage: dict(c) for stage, c in totals.items()}


def data_card(questions: list[dict[str, Any]], outcome: Outcome, *, num_seeds: int, questions_per_seed: int,
              solutions_per_question: int, verify: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """Counts after every stage (questions and solutions), removal reasons, tokens and dollars."""
    status = Counter(q["status"] for q in questions)
    reasons = Counter(f"{q['status']}:{q['detail']}" if q["status"] == "question_rejected" else q["status"]
                      for q in questions if q["status"] != "kept")
    sols = [s for q in questions for s in json.loads(q["solutions_json"])]
    answered = [q for q in questions if q["question"] is not None]
    voted = [q for q in answered if q["status"] not in ("no_answer", "low_agreement", "budget", "request_failed")]
    majority = [s for s in sols if s["majority"]]
    formatted = [s for s in majority if s["format"] is None]
    kept_sols = [s for s in sols if s["keep"]]
    format_reasons = Counter(s["format"] for s in majority if s["format"] is not None)
    verify_reasons = Counter("incorrect" if s["verified"] is False else "no_verdict" if s.get("verify_error") is None
                             else "request_failed" for s in formatted if not s["keep"]) if verify else Counter()
    after_dedup = status["kept"] - len(outcome.duplicates)
    final_questions = len({r["id"].rsplit("/s", 1)[0] for r in outcome.rows})
    stages = [
        {"stage": "seeds", "questions": num_seeds},
        {"stage": "questions requested", "questions": num_seeds * questions_per_seed},
        {"stage": "questions returned", "questions": sum(1 for q in questions if q["status"] not in ("request_failed", "budget") or q["question"] is not None)},
        {"stage": "questions parsed", "questions": len(answered)},
        {"stage": "solutions returned", "questions": len(answered), "solutions": sum(1 for s in sols if s["text"] is not None)},
        {"stage": f"answer agreement >= threshold", "questions": len(voted), "solutions": len(majority)},
        {"stage": "format filters", "questions": len({id(q) for q in voted for s in json.loads(q["solutions_json"]) if s["format"] is None and s["majority"]}),
         "solutions": len(formatted)},
    ]
    if verify:
        stages.append({"stage": "teacher verification", "questions": status["kept"], "solutions": len(kept_sols)})
    stages += [
        {"stage": "exact + near dedup", "questions": after_dedup},
        {"stage": "decontamination", "questions": after_dedup - len(outcome.contaminated), "solutions": len(outcome.rows)},
        {"stage": "final dataset", "questions": final_questions, "solutions": len(outcome.rows)},
    ]
    usage = usage_totals(questions)
    totals = Counter()
    for u in usage.values():
        totals.update(u)
    return {
        "rows": len(outcome.rows),
        "questions": final_questions,
        "stages": stages,
        "removals": {
            "questions": dict(sorted(reasons.items())),
            "solutions_format": dict(sorted(format_reasons.items())),
            "solutions_verification": dict(sorted(verify_reasons.items())),
            "duplicates": dict(Counter(d["kind"] for d in outcome.duplicates)),
            "contaminated": len(outcome.contaminated),
        },
        "usage": usage,
        "totals": {k: totals[k] for k in ("requests", "cached", "failed", "budget_refused", "prompt_tokens",
                                          "completion_tokens", "cost")},
        **extra,
    }


def data_card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card.get('name', 'synthetic SFT data')}", ""]
    lines += [f"- teacher: `{card['teacher']['model']}` at {card['teacher']['base_url'] or 'the OpenAI API'}",
              f"- final dataset: **{card['rows']} rows** ({card['questions']} questions) in `data/`",
              f"- spend: ${card['totals']['cost']:.4f} in all (this run: ${card.get('cost_this_run_usd', 0):.4f}); "
              f"requests sent {card['totals']['requests']:.0f}, served from cache {card['totals']['cached']:.0f}, "
              f"failed {card['totals']['failed']:.0f}",
              f"- stopped by budget: {card.get('stopped_by_budget', False)}", "",
              "## Rows after every stage", "", "| stage | questions | solutions |", "|---|---:|---:|"]
    for s in card["stages"]:
        lines.append(f"| {s['stage']} | {s.get('questions', '')} | {s.get('solutions', '')} |")
    lines += ["", "## Removal reasons", ""]
    for group, reasons in card["removals"].items():
        lines.append(f"- {group}: {reasons if reasons else 0}")
    lines += ["", "## Tokens and cost per stage", "", "| stage | requests | cached | failed | prompt tokens | completion tokens | USD |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for stage, u in card["usage"].items():
        lines.append(f"| {stage} | {u.get('requests', 0):.0f} | {u.get('cached', 0):.0f} | {u.get('failed', 0):.0f} | "
                     f"{u.get('prompt_tokens', 0):.0f} | {u.get('completion_tokens', 0):.0f} | {u.get('cost', 0):.4f} |")
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"
