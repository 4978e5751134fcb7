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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lib.data import DATASETS, load_dataset
from lib.schemas import QUESTION_COLUMNS, QUESTION_ID, SFT_SCHEMA, check_columns
from lib.synthesis import SOLUTION_PROMPT_NAME, NearDuplicateIndex, NgramIndex, normalize_text
from lib.verification import VERIFY_PROMPT_NAME

log = logging.getLogger("mathray.synthesis")

ROWS_PER_FILE = 100_000  # dataset rows per Parquet file


def build_test_index(n: int = 13, datasets: list[str] | None = None) -> NgramIndex:
    """Word n-grams of every test set in the data registry (or of ``datasets``). The generated GSM-Symbolic
    sets are left out by default: their templates are GSM8K test questions, which the index already holds."""
    index = NgramIndex(n)
    for name in datasets or sorted(DATASETS):
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


def question_parts(questions_dir: Path) -> list[Path]:
    return sorted(questions_dir.glob("part-*.parquet"))


def read_question_part(part: Path, columns: list[str] | None = None):
    """One ``questions/`` part as a table (``columns``: only those), after checking that it has every column
    of ``lib.schemas.QUESTION_COLUMNS`` (a :class:`lib.schemas.SchemaError` naming the column and the part)."""
    import pyarrow.parquet as pq

    check_columns(pq.read_schema(part).names, QUESTION_COLUMNS, part)
    return pq.read_table(part, columns=columns)


def read_questions(questions_dir: Path) -> list[dict[str, Any]]:
    """All question rows in id order (small runs and tests; the job streams with :class:`PartReader`)."""
    rows: list[dict[str, Any]] = []
    for part in question_parts(questions_dir):
        rows += read_question_part(part).to_pylist()
    rows.sort(key=lambda r: r[QUESTION_ID])
    return rows


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)  # empty when a sink took them
    num_rows: int = 0
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    contaminated: list[dict[str, Any]] = field(default_factory=list)
    num_questions: int = 0  # questions with at least one row


def find_duplicates(kept: Iterable[tuple[str, str, Any]], *, exact: bool, near: bool, near_threshold: float,
                    num_perm: int) -> list[dict[str, Any]]:
    """``kept``: (question_id, question, minhash signature) of the kept questions. Returns the exact and
    near duplicates, each naming the earlier (lower id) question it duplicates."""
    duplicates: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    near_index = NearDuplicateIndex(near_threshold, num_perm) if near else None
    for qid, text, signature in sorted(kept, key=lambda k: k[0]):
        key = normalize_text(text)
        if exact and key in seen:
            duplicates.append({QUESTION_ID: qid, "duplicate_of": seen[key], "kind": "exact"})
            continue
        seen.setdefault(key, qid)
        if near_index is not None and (other := near_index.add(qid, signature)) is not None:
            duplicates.append({QUESTION_ID: qid, "duplicate_of": other, "kind": "near"})
    return duplicates


def contamination(q: dict[str, Any], solutions: list[dict[str, Any]], index: NgramIndex) -> dict[str, Any] | None:
    """The nearest test item sharing an n-gram with the question (else with a kept solution), or None."""
    for where, text in [("question", q["question"])] + [("solution", s["text"]) for s in solutions]:
        if (hit := index.match(text)) is not None:
            test_id, shared, gram = hit
            return {QUESTION_ID: q[QUESTION_ID], "field": where, "test_id": test_id, "shared_ngrams": shared,
                    "example_ngram": gram, "question": q["question"], "test_question": index.text_of(test_id)}
    return None


def dataset_rows(q: dict[str, Any], solutions: list[dict[str, Any]], teacher_model: str, verify: bool) -> list[dict]:
    return [{
        "id": f"{q[QUESTION_ID]}/s{sol['index']}", "seed_id": q["seed_id"], "source": q["seed_dataset"],
        "question": q["question"], "solution": sol["text"], "answer": q["label"], "agreement": q["agreement"],
        "verified": sol["verified"], "teacher_model": teacher_model, "question_prompt": q["question_prompt"],
        "solution_prompt": SOLUTION_PROMPT_NAME, "verify_prompt": VERIFY_PROMPT_NAME if verify else None,
        "prompt_tokens": sol["prompt_tokens"], "completion_tokens": sol["completion_tokens"], "cost_usd": sol["cost"],
    } for sol in solutions]


class CardCounter:
    """Streaming counts for the data card: feed every question row once with :meth:`add`."""

    def __init__(self, verify: bool):
        self.verify = verify
        self.status: Counter = Counter()
        self.reasons: Counter = Counter()
        self.format_reasons: Counter = Counter()
        self.verify_reasons: Counter = Counter()
        self.usage: dict[str, Counter] = {}
        self.n = Counter()

    def add(self, q: dict[str, Any], solutions: list[dict[str, Any]]) -> None:
        n, status = self.n, q["status"]
        self.status[status] += 1
        if status != "kept":
            self.reasons[f"{status}:{q['detail']}" if status == "question_rejected" else status] += 1
        for stage, usage in json.loads(q["usage_json"]).items():
            self.usage.setdefault(stage, Counter()).update(usage)
        n["returned"] += int(status not in ("request_failed", "budget") or q["question"] is not None)
        if q["question"] is None:
            return
        n["parsed"] += 1
        n["solutions_returned"] += sum(1 for s in solutions if s["text"] is not None)
        majority = [s for s in solutions if s["majority"]]
        formatted = [s for s in majority if s["format"] is None]
        if status not in ("no_answer", "low_agreement", "budget", "request_failed"):
            n["voted"] += 1
        n["majority"] += len(majority)
        n["formatted"] += len(formatted)
        n["formatted_questions"] += int(bool(formatted))
        n["kept_solutions"] += sum(1 for s in solutions if s["keep"])
        self.format_reasons.update(s["format"] for s in majority if s["format"] is not None)
        if self.verify:
            self.verify_reasons.update(
                "incorrect" if s["verified"] is False else "no_verdict" if s.get("verify_error") is None else "request_failed"
                for s in formatted if not s["keep"])

    def card(self, outcome: Outcome, *, num_seeds: int, questions_per_seed: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Counts after every stage (questions and solutions), removal reasons, tokens and dollars."""
        n = self.n
        after_dedup = self.status["kept"] - len(outcome.duplicates)
        stages = [
            {"stage": "seeds", "questions": num_seeds},
            {"stage": "questions requested", "questions": num_seeds * questions_per_seed},
            {"stage": "questions returned", "questions": n["returned"]},
            {"stage": "questions parsed", "questions": n["parsed"]},
            {"stage": "solutions returned", "questions": n["parsed"], "solutions": n["solutions_returned"]},
            {"stage": "answer agreement >= threshold", "questions": n["voted"], "solutions": n["majority"]},
            {"stage": "format filters", "questions": n["formatted_questions"], "solutions": n["formatted"]},
        ]
        if self.verify:
            stages.append({"stage": "teacher verification", "questions": self.status["kept"], "solutions": n["kept_solutions"]})
        stages += [
            {"stage": "exact + near dedup", "questions": after_dedup},
            {"stage": "decontamination", "questions": after_dedup - len(outcome.contaminated), "solutions": outcome.num_rows},
            {"stage": "final dataset", "questions": outcome.num_questions, "solutions": outcome.num_rows},
        ]
        totals = Counter()
        for u in self.usage.values():
            totals.update(u)
        return {
            "rows": outcome.num_rows,
            "questions": outcome.num_questions,
            "stages": stages,
            "removals": {
                "questions": dict(sorted(self.reasons.items())),
                "solutions_format": dict(sorted(self.format_reasons.items())),
                "solutions_verification": dict(sorted(self.verify_reasons.items())),
                "duplicates": dict(Counter(d["kind"] for d in outcome.duplicates)),
                "contaminated": len(outcome.contaminated),
            },
            "usage": {stage: dict(c) for stage, c in self.usage.items()},
            "totals": {k: totals[k] for k in ("requests", "retries", "cached", "failed", "budget_refused",
                                              "prompt_tokens", "completion_tokens", "cost")},
            **extra,
        }


def select(questions: Iterable[dict[str, Any]], *, exact: bool, near: bool, near_threshold: float, num_perm: int,
           test_index: NgramIndex | None, teacher_model: str, verify: bool, counter: CardCounter | None = None,
           sink: Callable[[list[dict[str, Any]]], None] | None = None) -> Outcome:
    """Dedup (exact, then near, in id order) and decontaminate the kept questions; explode their kept
    solutions into dataset rows. With ``sink`` the rows go there (in batches) instead of ``outcome.rows``;
    ``questions`` may then be an iterable that is read twice (a :class:`PartReader`)."""
    if isinstance(questions, list):
        questions = sorted(questions, key=lambda r: r[QUESTION_ID])
    import numpy as np

    kept = ((q[QUESTION_ID], q["question"], np.asarray(q["signature"], dtype=np.uint64))
            for q in _rows(questions, SCAN_COLUMNS) if q["status"] == "kept")
    out = Outcome(duplicates=find_duplicates(kept, exact=exact, near=near, near_threshold=near_threshold, num_perm=num_perm))
    dropped = {d[QUESTION_ID] for d in out.duplicates}
    buffer: list[dict[str, Any]] = []
    for q in _rows(questions, None):
        solutions = json.loads(q["solutions_json"])
        if counter is not None:
            counter.add(q, solutions)
        if q["status"] != "kept" or q[QUESTION_ID] in dropped:
            continue
        solutions = [s for s in solutions if s["keep"]]
        if test_index is not None and (hit := contamination(q, solutions, test_index)) is not None:
            out.contaminated.append(hit)
            continue
        rows = dataset_rows(q, solutions, teacher_model, verify)
        out.num_questions += 1
        out.num_rows += len(rows)
        buffer += rows
        if sink is not None and len(buffer) >= ROWS_PER_FILE:
            sink(buffer)
            buffer = []
    if sink is None:
        out.rows = buffer
    elif buffer:
        sink(buffer)
    out.contaminated.sort(key=lambda c: c[QUESTION_ID])
    return out


SCAN_COLUMNS = [QUESTION_ID, "question", "status", "signature"]


class PartReader:
    """The question parts of a directory, read one file at a time (optionally only some columns); each part's
    columns are checked when it is first read (:func:`read_question_part`)."""

    def __init__(self, questions_dir: Path):
        self.parts = question_parts(questions_dir)

    def rows(self, columns: list[str] | None) -> Iterator[dict[str, Any]]:
        for part in self.parts:
            yield from read_question_part(part, columns).to_pylist()


def _rows(questions: Iterable[dict[str, Any]] | PartReader, columns: list[str] | None) -> Iterator[dict[str, Any]]:
    return questions.rows(columns) if isinstance(questions, PartReader) else iter(questions)


class DatasetWriter:
    """Writes dataset rows to ``data_dir/part-NNNNN.parquet`` (atomic files, ROWS_PER_FILE rows each)."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        for old in data_dir.glob("part-*.parquet"):
            old.unlink()
        self.files: list[str] = []

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        path = self.data_dir / f"part-{len(self.files):05d}.parquet"
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=SFT_SCHEMA), path)
        self.files.append(path.name)

    def close(self) -> list[str]:
        if not self.files:  # an empty dataset still has its schema on disk
            self([])
        return self.files


def data_card(questions: list[dict[str, Any]], outcome: Outcome, *, num_seeds: int, questions_per_seed: int,
              verify: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """The data card of in-memory question rows (the job counts while streaming, via :class:`CardCounter`)."""
    counter = CardCounter(verify)
    for q in questions:
        counter.add(q, json.loads(q["solutions_json"]))
    return counter.card(outcome, num_seeds=num_seeds, questions_per_seed=questions_per_seed, extra=extra)


def data_card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card.get('name', 'synthetic SFT data')}", ""]
    lines += [f"- teacher: `{card['teacher']['model']}` at {card['teacher']['base_url'] or 'the OpenAI API'}",
              f"- final dataset: **{card['rows']} rows** ({card['questions']} questions) in `data/`",
              f"- spend: ${card.get('spent_total_usd', card['totals']['cost']):.4f} in all (this run: "
              f"${card.get('cost_this_run_usd', 0):.4f}); the responses used are worth ${card['totals']['cost']:.4f} "
              "(a response reused from the cache counts each time it is used); "
              f"requests sent {card['totals']['requests']:.0f} ({card['totals'].get('retries', 0):.0f} of them retries), "
              f"served from cache {card['totals']['cached']:.0f}, "
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
