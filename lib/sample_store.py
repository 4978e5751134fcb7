"""Graded samples on disk: atomic Parquet parts, resume bookkeeping, and the grade-and-store stage.

Layout of an evaluation output directory::

    samples/part-*.parquet   one row per (question_id, sample_idx), temperature sampling
    greedy/part-*.parquet    one row per question, temperature 0 (sample_idx 0)

Each part is written to a temporary name and renamed when complete, so a killed run leaves only
whole parts (and stray ``*.tmp`` files, removed on the next start). Resume is bookkeeping: which
(question_id, sample_idx) pairs exist, never a replay of the sampler.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lib.grading import Grader

log = logging.getLogger(__name__)

KINDS = ("samples", "greedy")
SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("dataset", pa.string()),
        ("sample_idx", pa.int64()),
        ("text", pa.string()),
        ("num_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("extracted", pa.string()),
        ("extraction_method", pa.string()),
        ("canonical", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("gold", pa.string()),
    ]
)


class SampleStore:
    """Reads and writes the ``samples/`` and ``greedy/`` parts of one output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def directory(self, kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown sample kind {kind!r}; expected one of {KINDS}")
        return self.root / kind

    def parts(self, kind: str) -> list[Path]:
        return sorted(self.directory(kind).glob("part-*.parquet"))

    def clean(self) -> int:
        """Remove temporary files a killed run left behind; returns how many."""
        removed = 0
        for kind in KINDS:
            for tmp in self.directory(kind).glob("*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def write(self, kind: str, table: pa.Table) -> Path:
        """Write one part atomically (temporary name, then rename)."""
        directory = self.directory(kind)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{uuid.uuid4().hex}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table.cast(SCHEMA), tmp)
        os.replace(tmp, final)
        return final

    def read(self, kind: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of ``kind`` (empty table if none), one row per (question_id, sample_idx)."""
        parts = self.parts(kind)
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        if not parts:
            return schema.empty_table()
        table = pa.concat_tables(pq.read_table(p, columns=columns, schema=SCHEMA if columns is None else None) for p in parts)
        return _drop_duplicates(table)

    def existing(self, kind: str) -> dict[str, set[int]]:
        """question_id -> the sample indices already stored."""
        table = self.read(kind, columns=["question_id", "sample_idx"])
        done: dict[str, set[int]] = defaultdict(set)
        for qid, idx in zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist()):
            done[qid].add(idx)
        return done


def _drop_duplicates(table: pa.Table) -> pa.Table:
    """Keep the first row of each (question_id, sample_idx); parts never overlap unless copied by hand."""
    if table.num_rows == 0:
        return table
    keyed = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = keyed.group_by(["question_id", "sample_idx"], use_threads=False).aggregate([("_row", "min")])
    if first.num_rows == table.num_rows:
        return table
    log.warning("dropping %d duplicate sample rows", table.num_rows - first.num_rows)
    return table.take(first.column("_row_min").to_pylist())


def plan_requests(
    questions: list[Any],
    existing_samples: dict[str, set[int]],
    existing_greedy: dict[str, set[int]],
    *,
    samples_per_question: int,
    samples_per_request: int,
    greedy: bool,
) -> list[dict]:
    """Request rows for the samples still missing: a question's missing indices in chunks of
    ``samples_per_request``, plus one greedy request for each question without a greedy sample."""
    if samples_per_request < 1:
        raise ValueError(f"samples_per_request must be >= 1, got {samples_per_request}")
    requests = []
    for q in questions:
        base = {"question_id": q.id, "dataset": q.dataset, "question": q.question, "gold": q.answer}
        if greedy and 0 not in existing_greedy.get(q.id, ()):
            requests.append({**base, "kind": "greedy", "sample_indices": [0]})
        have = existing_samples.get(q.id, set())
        missing = [i for i in range(samples_per_question) if i not in have]
        for start in range(0, len(missing), samples_per_request):
            requests.append({**base, "kind": "samples", "sample_indices": missing[start : start + samples_per_request]})
    return requests


class GradeAndStore:
    """Ray Data stage: grade a batch of sample rows, store them as one part per kind, return a summary.

    The summary row per (question, kind) carries counts for progress reporting; the samples
    themselves never travel back to the driver.
    """

    def __init__(self, output_dir: str, timeout_s: float, golds: dict[str, str] | None = None):
        self.store = SampleStore(output_dir)
        self.grader = Grader(timeout=timeout_s)
        self.golds = golds

    def grade_table(self, batch: dict[str, Any]) -> dict[str, list]:
        """Add extraction and verdict columns to a batch of sample rows."""
        n = len(batch["question_id"])
        golds = [self.golds[str(q)] if self.golds is not None else str(g) for q, g in zip(batch["question_id"], batch["gold"])]
        out = {c: [batch[c][i] for i in range(n)] for c in ("question_id", "dataset", "sample_idx", "text", "num_tokens", "finish_reason")}
        out.update(gold=golds, extracted=[], extraction_method=[], canonical=[], status=[], error=[])
        items = [(str(batch["text"][i]), golds[i], str(batch["question_id"][i])) for i in range(n)]
        verdicts = self.grader.grade_many(items)
        for i, verdict in enumerate(verdicts):
            if batch["finish_reason"][i] == "error":  # the engine produced no sample: keep the row as an error
                out["extracted"].append(None)
                out["extraction_method"].append("none")
                out["canonical"].append(None)
                out["status"].append("error")
                out["error"].append(str(batch["error"][i]))
                continue
            out["extracted"].append(verdict.extracted)
            out["extraction_method"].append(verdict.method)
            out["canonical"].append(verdict.canonical)
            out["status"].append(verdict.status)
            out["error"].append(verdict.error)
        return out

    def __call__(self, batch: dict[str, Any], kind: str | None = None) -> dict[str, list]:
        """Grade and store ``batch``; rows go to their ``kind`` column's part, or all to ``kind``."""
        graded = self.grade_table(batch)
        kinds = [kind] * len(graded["question_id"]) if kind else [str(k) for k in batch["kind"]]
        summary: dict[str, list] = {"question_id": [], "kind": [], "num_samples": [], "num_tokens": [], "num_correct": []}
        for kind in sorted(set(kinds)):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            table = pa.table({c: [graded[c][i] for i in rows] for c in SCHEMA.names}, schema=SCHEMA)
            self.store.write(kind, table)
            per_question: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
            for i in rows:
                acc = per_question[str(graded["question_id"][i])]
                acc[0] += 1
                acc[1] += int(graded["num_tokens"][i])
                acc[2] += graded["status"][i] == "correct"
            for qid, (num, tokens, correct) in per_question.items():
                for key, value in zip(summary, (qid, kind, num, tokens, correct)):
                    summary[key].append(value)
        return summary
