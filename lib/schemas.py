"""The shapes of every stage's rows, in one place: column names, pyarrow schemas, the typed ``metrics.json`` entry.

Evaluation (``jobs/evaluate.py``)::

    plan_requests -> REQUEST_COLUMNS -> sampling stage -> SAMPLER_COLUMNS -> GradeAndStore
        -> SAMPLE_SCHEMA (samples/, greedy/ parts) -> metrics (METRICS_INPUT_COLUMNS) -> MetricsEntry per group

Synthesis (``jobs/synthesize.py``)::

    seeds -> synthesis stage -> QUESTION_SCHEMA (questions/ parts) -> dedup, decontamination
        -> SFT_SCHEMA (data/ parts) -> ``lib.sft_data.load_pairs`` -> SFTPair (id, question, solution)
        -> ``lib.sft.tokenize_batch`` -> TOKENIZED_SCHEMA (object-store blocks) -> ``lib.sft.TokenizedRows``

A stage checks its input columns once, with :func:`check_columns`: a missing column is a
:class:`SchemaError` naming the column and the file (or the stage) it is missing from, before any work.
The benchmark questions themselves are ``lib.data.Question`` records (the loader's output, next to the
dataset registry that builds them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lib.data import DataError

# ------------------------------------------------------------------------------ shared column names

QUESTION_ID = "question_id"  # a benchmark question's id (evaluation), a generated question's id (synthesis)
SAMPLE_IDX = "sample_idx"  # a sample's index among its question's samples (0 for the greedy one)
DATASET = "dataset"
KIND = "kind"  # "samples" (temperature sampling) or "greedy"
GOLD = "gold"
TEXT = "text"
STATUS = "status"  # a grading status, lib.grading.STATUSES
CANONICAL = "canonical"
FINISH_REASON = "finish_reason"

# -------------------------------------------------------------------------------------- evaluation

# lib.sample_store.plan_requests -> the sampling stage: one row per request of ``sample_indices`` of one question
REQUEST_COLUMNS = (QUESTION_ID, DATASET, "question", GOLD, KIND, "sample_indices")
# the sampling stage (lib.sampling.VLLMSampler) -> GradeAndStore: one row per sample
SAMPLER_COLUMNS = (QUESTION_ID, DATASET, KIND, SAMPLE_IDX, GOLD, TEXT, "num_tokens", FINISH_REASON, "error")
# GradeAndStore -> the driver: per (question, kind) counts for progress and stop_at_first_correct (num_errors:
# engine-error rows, sampled again on resume), never the samples themselves
GRADE_SUMMARY_COLUMNS = (QUESTION_ID, KIND, "num_samples", "num_tokens", "num_correct", "num_errors")

# stored, graded samples: ``samples/part-*.parquet`` and ``greedy/part-*.parquet`` (lib.sample_store)
SAMPLE_SCHEMA = pa.schema(
    [
        (QUESTION_ID, pa.string()),
        (DATASET, pa.string()),
        (SAMPLE_IDX, pa.int64()),
        (TEXT, pa.string()),
        ("num_tokens", pa.int64()),
        (FINISH_REASON, pa.string()),
        ("extracted", pa.string()),
        ("extraction_method", pa.string()),
        (CANONICAL, pa.string()),
        (STATUS, pa.string()),
        ("error", pa.string()),
        (GOLD, pa.string()),
    ]
)
SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)
# what the metrics read of the stored samples (plus ``text`` for rules in lib.selection.NEEDS_TEXTS)
METRICS_INPUT_COLUMNS = (QUESTION_ID, SAMPLE_IDX, STATUS, CANONICAL)

# ----------------------------------------------------------------------------------------- synthesis

# the synthesis job -> the synthesis stage (lib.synthesis_stage.SynthesizeSeeds): one row per seed question
SEED_COLUMNS = ("seed_id", DATASET, "question", "answer", "level", "type")
# the synthesis stage -> ``questions/part-*.parquet``: one row per generated question (lib.synthesis_stage)
QUESTION_SCHEMA = pa.schema(
    [(QUESTION_ID, pa.string()), ("seed_id", pa.string()), ("seed_dataset", pa.string()),
     ("question_prompt", pa.string()), ("question", pa.string()), (STATUS, pa.string()), ("detail", pa.string()),
     ("label", pa.string()), ("votes", pa.int32()), ("agreement", pa.float64()), ("solutions_json", pa.string()),
     ("usage_json", pa.string()), ("errors_json", pa.string()), ("signature", pa.list_(pa.int64()))]
)
QUESTION_COLUMNS = tuple(QUESTION_SCHEMA.names)

# the SFT dataset -> ``data/part-*.parquet``: one row per kept (question, solution) (lib.synthesis_output)
SFT_SCHEMA = pa.schema(
    [("id", pa.string()), ("seed_id", pa.string()), ("source", pa.string()), ("question", pa.string()),
     ("solution", pa.string()), ("answer", pa.string()), ("agreement", pa.float64()), ("verified", pa.bool_()),
     ("teacher_model", pa.string()), ("question_prompt", pa.string()), ("solution_prompt", pa.string()),
     ("verify_prompt", pa.string()), ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
     ("cost_usd", pa.float64())]
)
SFT_COLUMNS = tuple(SFT_SCHEMA.names)

# ``lib.sft.tokenize_batch`` -> the SFT job's workers (``lib.sft.TokenizedRows``): one row per tokenized pair, ``idx``
# its position among the job's pairs. int32 token ids (vocabularies are far below 2**31; labels hold -100 on prompt
# tokens): half the memory of Python's default int64 inference, in the object store and in every worker's view.
TOKENIZED_SCHEMA = pa.schema([("idx", pa.int64()), ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])


class SFTPair(NamedTuple):
    """One SFT example as the trainer reads it (``lib.sft_data.load_pairs``), from any source."""

    id: str
    question: str
    solution: str


# ------------------------------------------------------------------------------------------ checks


class SchemaError(DataError):
    """Rows lack a column their stage needs; the message names the column and the file (or stage)."""


def check_columns(present: Iterable[str], required: Iterable[str], where: str | Path) -> None:
    """Raise :class:`SchemaError` naming the first missing column of ``required`` and ``where`` the rows
    come from (a file, or a stage's input); nothing when all are present."""
    have = list(present)
    missing = [c for c in required if c not in have]
    if missing:
        raise SchemaError(f"{where}: missing column {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else "")
                          + f"; it has {have}")


# ------------------------------------------------------------------------------ metrics.json entry


class MetricsEntry(BaseModel):
    """One group's entry of ``metrics.json`` (a dataset, or ``dataset/level=...`` / ``dataset/type=...``), as
    ``lib.metrics_aggregate`` computes it and ``lib.report`` writes it. Attribute names are the file's keys
    with ``@`` spelled ``_at_`` (``pass_at_k`` is ``"pass@k"``); k keys are strings ("1", "2", ...).

    Three shapes: a graded group (``pass_at_k`` ... ``ci95``); an adaptive run's graded group (``adaptive``,
    ``samples_drawn``, ``samples_full``; ``maj_at_k`` and ``pass_ratio`` None: not available); a group without
    gold answers (``graded`` False, counts only). Keys absent from a file stay absent when written back
    (:meth:`to_json_dict`), so older files round-trip unchanged."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    graded: bool = True  # written only as false: every question of the group lacks a gold answer
    num_questions: int
    samples_per_question: int | list[int]  # a list when the group's questions have different n
    adaptive: bool = False
    samples_drawn: int | None = None
    samples_full: int | None = None
    greedy_pass_at_1: float | None = Field(None, alias="greedy_pass@1")
    pass_at_k: dict[str, float] | None = Field(None, alias="pass@k")
    maj_at_k: dict[str, float] | None = Field(None, alias="maj@k")
    select_at_k: dict[str, dict[str, float]] | None = Field(None, alias="select@k")
    pass_ratio: float | None = None
    pass_at_every_k: list[float] | None = Field(None, alias="pass@every_k")  # index k-1, no CIs
    ci95: dict[str, list[float]] = Field(default_factory=dict)  # metric name ("pass@4", "maj@4", ...) -> [lo, hi]
    num_ungraded_questions: int | None = None
    status_counts: dict[str, int]
    greedy_status_counts: dict[str, int] = Field(default_factory=dict)
    grader: dict[str, Any] | None = None  # the grader settings; in the file, not in the computed metrics

    @property
    def has_accuracy(self) -> bool:
        """Whether the entry has accuracy metrics (False: no question of the group has a gold answer)."""
        return self.pass_at_k is not None

    def to_json_dict(self) -> dict[str, Any]:
        """The entry as written to ``metrics.json``: file keys, the keys it was built with."""
        return self.model_dump(by_alias=True, exclude_unset=True)


def metrics_entries(metrics: Mapping[str, Mapping[str, Any] | MetricsEntry], where: str | Path = "metrics") \
        -> dict[str, MetricsEntry]:
    """``{group: MetricsEntry}`` from computed or read-back entries (dicts are validated; entries pass
    through). A malformed entry is a :class:`SchemaError` naming ``where``, the group and the key."""
    out: dict[str, MetricsEntry] = {}
    for name, entry in metrics.items():
        if isinstance(entry, MetricsEntry):
            out[name] = entry
            continue
        try:
            out[name] = MetricsEntry.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise SchemaError(f"{where}: entry {name!r}: key {key!r}: {first['msg']}") from None
    return out


def read_metrics_json(path: str | Path) -> dict[str, MetricsEntry]:
    """A run's ``metrics.json`` as typed entries."""
    return metrics_entries(json.loads(Path(path).read_text()), path)
