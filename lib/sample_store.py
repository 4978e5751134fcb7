"""Graded samples on disk: atomic Parquet parts, resume bookkeeping, and the grade-and-store stage.

Layout of an evaluation output directory::

    samples/part-*.parquet   one row per (question_id, sample_idx), temperature sampling
    greedy/part-*.parquet    one row per question, temperature 0 (sample_idx 0)

Each part is written to a temporary name, fsync'd and renamed when complete (the directory fsync'd
too), so a killed run leaves only whole parts (and stray ``*.tmp`` files). Resume is bookkeeping: which
(question_id, sample_idx) pairs exist, never a replay of the sampler. :meth:`SampleStore.clean`, run
when a job starts, repairs what a kill or a crash can leave: ``*.tmp`` files are removed, a part that is
not readable Parquet (empty, truncated) is moved to ``.corrupt/`` (its samples are then sampled again),
and a re-grade's interrupted swap is finished or undone (see :meth:`SampleStore.swap_in`).

Rows with ``finish_reason="error"`` (the engine produced no sample) are kept for the record but do not
count as done: the next run samples them again, and the new row replaces the error row on read.
``questions.json`` holds each question's content hash (text + gold), so a resume refuses questions
that changed under the same id.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from lib.config import ConfigError
from lib.grading import Grader
from lib.schemas import (FINISH_REASON, GOLD, GRADE_SUMMARY_COLUMNS, KIND, QUESTION_ID, SAMPLE_IDX, SAMPLE_SCHEMA,
                         SAMPLER_COLUMNS, check_columns)

log = logging.getLogger(__name__)

KINDS = ("samples", "greedy")
QUESTIONS_FILE = "questions.json"
ENGINE_ERROR = "error"  # finish_reason of a row for which the engine produced no sample
SCHEMA = SAMPLE_SCHEMA  # lib.schemas names the stored rows; tests/jobs and tests/reliability import this name


class SampleStore:
    """Reads and writes the ``samples/`` and ``greedy/`` parts of one output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._question_parts: dict[str, dict[str, list[Path]]] = {}  # kind -> question_id -> its parts

    def directory(self, kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown sample kind {kind!r}; expected one of {KINDS}")
        return self.root / kind

    def parts(self, kind: str) -> list[Path]:
        return sorted(self.directory(kind).glob("part-*.parquet"))

    def staging(self) -> Path:
        """Where a re-grade builds its copy (``staging()/<kind>``) before :meth:`swap_in`."""
        return self.root / ".regrade"

    def mark_complete(self, kind: str) -> None:
        """Record that the re-graded copy of ``kind`` in :meth:`staging` is whole (the swap may roll forward)."""
        marker = self.staging() / f"{kind}.complete"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text("complete\n")
        _fsync(tmp)
        os.replace(tmp, marker)
        _fsync(self.staging())

    def swap_in(self, kind: str) -> None:
        """Replace ``kind`` by its complete re-graded copy in :meth:`staging`. A kill at any step leaves a
        state that :meth:`clean` turns into all-old or all-new grades: before the completion marker, the old
        grades stay; after it, the copy is moved in (``.old-<kind>`` holds the old grades meanwhile)."""
        staged, live, old = self.staging() / kind, self.directory(kind), self.root / f".old-{kind}"
        self.mark_complete(kind)
        if old.exists():  # a stale copy from a swap killed after its last rename
            shutil.rmtree(old)
        if live.exists():
            os.replace(live, old)
        os.replace(staged, live)
        _fsync(self.root)
        if old.exists():
            shutil.rmtree(old)
        (self.staging() / f"{kind}.complete").unlink()

    def _recover_swap(self) -> None:
        for kind in KINDS:
            staged, live, old = self.staging() / kind, self.directory(kind), self.root / f".old-{kind}"
            if not old.exists():
                continue
            if not live.exists():
                complete = staged.exists() and (self.staging() / f"{kind}.complete").exists()
                log.warning("finishing a re-grade of %s killed mid-swap: %s", kind, "new grades" if complete else "old grades kept")
                os.replace(staged if complete else old, live)
                _fsync(self.root)
            if old.exists():
                shutil.rmtree(old)
        if self.staging().exists():
            shutil.rmtree(self.staging())

    def clean(self) -> int:
        """Repair what a killed or crashed run left (see the module docstring); returns how many files were
        removed or set aside."""
        self._recover_swap()
        removed = 0
        for kind in KINDS:
            for tmp in self.directory(kind).glob("*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
            for part in self.parts(kind):
                try:
                    pq.read_metadata(part)
                except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                    corrupt = self.root / ".corrupt"
                    corrupt.mkdir(exist_ok=True)
                    log.warning("%s is not readable Parquet (%s): moved to %s; its samples will be sampled again",
                                part, exc, corrupt)
                    os.replace(part, corrupt / f"{kind}-{part.name}")
                    removed += 1
        return removed

    def write(self, kind: str, table: pa.Table) -> Path:
        """Write one part atomically and durably (temporary name, fsync, rename, fsync the directory)."""
        directory = self.directory(kind)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{uuid.uuid4().hex}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table.cast(SAMPLE_SCHEMA), tmp)
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(directory)
        return final

    def read(self, kind: str, columns: list[str] | None = None) -> pa.Table:
        """All rows of ``kind`` (empty table if none), one row per (question_id, sample_idx); where a pair
        has an engine-error row and a real sample, the sample."""
        return self._read(self.parts(kind), columns)

    def read_questions(self, kind: str, question_ids: list[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of ``question_ids`` only, as :meth:`read` gives them, read from the parts that hold those
        questions: a caller that goes through the questions in chunks holds one chunk's rows (e.g. the
        samples' texts, 770 MiB of Arrow at 1M samples) instead of all of them. The first call per kind reads
        each part's question ids once."""
        if kind not in self._question_parts:
            index: dict[str, list[Path]] = defaultdict(list)
            for part in self.parts(kind):
                for qid in pq.read_table(part, columns=[QUESTION_ID]).column(QUESTION_ID).unique().to_pylist():
                    index[qid].append(part)
            self._question_parts[kind] = index
        index = self._question_parts[kind]
        parts = sorted({part for qid in question_ids for part in index.get(qid, ())})
        return self._read(parts, columns, pa.array(list(question_ids), pa.string()))

    def _read(self, parts: list[Path], columns: list[str] | None, only: pa.Array | None = None) -> pa.Table:
        wanted = list(columns) if columns is not None else SAMPLE_SCHEMA.names
        if not parts:
            return pa.schema([SAMPLE_SCHEMA.field(c) for c in wanted]).empty_table()
        needed = list(dict.fromkeys([*wanted, QUESTION_ID, SAMPLE_IDX, FINISH_REASON]))
        schema = pa.schema([SAMPLE_SCHEMA.field(c) for c in needed])
        tables = (_read_part(p, needed).cast(schema) for p in parts)
        if only is not None:
            tables = (t.filter(pa.compute.is_in(t[QUESTION_ID], value_set=only)) for t in tables)
        return _drop_duplicates(pa.concat_tables(tables)).select(wanted)

    def existing(self, kind: str) -> dict[str, set[int]]:
        """question_id -> the sample indices already stored (engine-error rows are not done)."""
        table = self.read(kind, columns=[QUESTION_ID, SAMPLE_IDX, FINISH_REASON])
        done: dict[str, set[int]] = defaultdict(set)
        for qid, idx, finish in zip(table.column(QUESTION_ID).to_pylist(), table.column(SAMPLE_IDX).to_pylist(),
                                    table.column(FINISH_REASON).to_pylist()):
            if finish != ENGINE_ERROR:
                done[qid].add(idx)
        return done

    def check_questions(self, questions: list[Any]) -> None:
        """Refuse questions whose text or gold changed since this directory's samples were stored."""
        path = self.root / QUESTIONS_FILE
        if not path.exists():
            return
        stored = json.loads(path.read_text())
        changed = [q for q in questions if q.id in stored and stored[q.id] != q.content_hash()]
        if changed:
            raise ConfigError(
                f"{len(changed)} questions changed since their samples were stored in {self.root} "
                f"(e.g. {[q.id for q in changed[:3]]} from {changed[0].source or changed[0].dataset}): the question "
                "text or gold answer differs (an id of a user file is its row index), so stored samples would be "
                "graded against other questions; use a new output_dir")

    def record_questions(self, questions: list[Any]) -> None:
        """Add the questions' content hashes to ``questions.json`` (atomically)."""
        path = self.root / QUESTIONS_FILE
        stored = json.loads(path.read_text()) if path.exists() else {}
        stored.update({q.id: q.content_hash() for q in questions})
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=0, sort_keys=True))
        _fsync(tmp)
        os.replace(tmp, path)


def _read_part(path: Path, columns: list[str]) -> pa.Table:
    """``columns`` of one part; a part written without ``finish_reason`` (by hand, a tool) reads it as null.
    Another missing column is a :class:`lib.schemas.SchemaError` naming it and the part."""
    present = pq.read_schema(path).names
    check_columns(present, [c for c in columns if c != FINISH_REASON], path)
    table = pq.read_table(path, columns=[c for c in columns if c in present])
    if FINISH_REASON not in present:
        table = table.append_column(FINISH_REASON, pa.nulls(table.num_rows, pa.string()))
    return table.select(columns)


def _fsync(path: Path) -> None:
    """fsync a file or a directory (so a rename survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_duplicates(table: pa.Table) -> pa.Table:
    """One row per (question_id, sample_idx): the first real sample, else the first engine-error row
    (parts overlap only when an engine error was sampled again, or when copied by hand)."""
    if table.num_rows == 0:
        return table
    n = table.num_rows
    is_error = pa.compute.equal(table.column(FINISH_REASON), ENGINE_ERROR).fill_null(False).to_pylist()
    order = pa.array([int(err) * n + i for i, err in enumerate(is_error)], pa.int64())
    first = table.append_column("_order", order).group_by([QUESTION_ID, SAMPLE_IDX], use_threads=False).aggregate(
        [("_order", "min")])
    if first.num_rows == n:
        return table
    if first.num_rows < n - sum(is_error):
        log.warning("dropping duplicate sample rows")
    return table.take(sorted(o % n for o in first.column("_order_min").to_pylist()))


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
        base = {QUESTION_ID: q.id, "dataset": q.dataset, "question": q.question, GOLD: q.answer}  # REQUEST_COLUMNS
        if greedy and 0 not in existing_greedy.get(q.id, ()):
            requests.append({**base, "kind": "greedy", "sample_indices": [0]})
        have = existing_samples.get(q.id, set())
        missing = [i for i in range(samples_per_question) if i not in have]
        for start in range(0, len(missing), samples_per_request):
            requests.append({**base, "kind": "samples", "sample_indices": missing[start : start + samples_per_request]})
    return requests


class GradeAndStore:
    """Ray Data stage: grade a batch of sample rows, store them as one part per kind, return a summary.

    The summary row per (question, kind) carries counts (``lib.schemas.GRADE_SUMMARY_COLUMNS``) for progress
    reporting and the adaptive schedule; the samples themselves never travel back to the driver.
    """

    def __init__(self, output_dir: str, timeout_s: float, golds: dict[str, str] | None = None):
        self.store = SampleStore(output_dir)
        self.grader = Grader(timeout=timeout_s)
        self.golds = golds
        self.checked = False  # the input columns, on the first batch

    def check_input(self, batch: dict[str, Any], kind: str | None) -> None:
        """The sampler's row columns (``lib.schemas.SAMPLER_COLUMNS``) less ``kind`` when given and ``gold``
        when the golds come from the driver (a re-grade of stored rows); checked on the first batch."""
        if not self.checked:
            required = [c for c in SAMPLER_COLUMNS if not (c == KIND and kind) and not (c == GOLD and self.golds is not None)]
            check_columns(batch, required, "grade-and-store input rows" + (f" (re-grade of {kind}/)" if kind else ""))
            self.checked = True

    def grade_table(self, batch: dict[str, Any]) -> dict[str, list]:
        """Add extraction and verdict columns to a batch of sample rows."""
        n = len(batch[QUESTION_ID])
        golds = ([self.golds[str(q)] for q in batch[QUESTION_ID]] if self.golds is not None else [str(g) for g in batch[GOLD]])
        out = {c: [batch[c][i] for i in range(n)] for c in (QUESTION_ID, "dataset", SAMPLE_IDX, "text", "num_tokens", FINISH_REASON)}
        out.update(gold=golds, extracted=[], extraction_method=[], canonical=[], status=[], error=[])
        items = [(str(batch["text"][i]), golds[i], str(batch[QUESTION_ID][i])) for i in range(n)]
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
        self.check_input(batch, kind)
        graded = self.grade_table(batch)
        kinds = [kind] * len(graded[QUESTION_ID]) if kind else [str(k) for k in batch[KIND]]
        summary: dict[str, list] = {c: [] for c in GRADE_SUMMARY_COLUMNS}
        for kind in sorted(set(kinds)):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            table = pa.table({c: [graded[c][i] for i in rows] for c in SAMPLE_SCHEMA.names}, schema=SAMPLE_SCHEMA)
            self.store.write(kind, table)
            per_question: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for i in rows:
                acc = per_question[str(graded[QUESTION_ID][i])]
                acc[0] += 1
                acc[1] += int(graded["num_tokens"][i])
                acc[2] += graded["status"][i] == "correct"
                acc[3] += graded[FINISH_REASON][i] == ENGINE_ERROR
            for qid, (num, tokens, correct, errors) in per_question.items():
                for key, value in zip(summary, (qid, kind, num, tokens, correct, errors)):
                    summary[key].append(value)
        return summary
