"""lib/schemas.py: the row schemas are the ones the stages write, a stage refuses rows without a column it
needs (the error names the column and the file or stage), and metrics.json round-trips through MetricsEntry."""

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib.data import DataError, Question
from lib.metrics_aggregate import compute_adaptive_metrics, compute_metrics
from lib.report import write_metrics_json
from lib.sample_store import GradeAndStore, SampleStore
from lib.schemas import (QUESTION_COLUMNS, QUESTION_SCHEMA, SAMPLE_SCHEMA, SAMPLER_COLUMNS, SFT_SCHEMA, MetricsEntry,
                         SchemaError, SFTPair, read_metrics_json)
from lib.synthesis_output import DatasetWriter, PartReader, read_questions
from lib.synthesis_stage import SynthesizeSeeds, question_table

RUN = Path(__file__).resolve().parents[1] / "data" / "pipeline_run"


def sample_rows(rows, *, drop=()):
    """Stored-sample rows (question_id, sample_idx, status, canonical, text) in SAMPLE_SCHEMA, less ``drop``."""
    cols = {f.name: [None] * len(rows) for f in SAMPLE_SCHEMA}
    for name, values in zip(("question_id", "sample_idx", "status", "canonical", "text"), zip(*rows)):
        cols[name] = list(values)
    cols["dataset"] = [q.split("/")[0] for q in cols["question_id"]]
    table = pa.table(cols, schema=SAMPLE_SCHEMA)
    return table.drop_columns(list(drop))


QUESTIONS = [Question("a/0", "a", "?", "1", level="Level 1"), Question("a/1", "a", "?", "2", type="T"),
             Question("b/0", "b", "?", ""), Question("b/1", "b", "?", "4")]
SAMPLES = sample_rows(
    [("a/0", i, s, c, t) for i, (s, c, t) in enumerate([("correct", "1", "1"), ("incorrect", "7", "3 + 4 = 8"),
                                                         ("incorrect", "7", "7"), ("no_answer", None, "")])]
    + [("a/1", i, s, c, "x") for i, (s, c) in enumerate([("timeout", None), ("incorrect", "5"), ("correct", "2"), ("correct", "2")])]
    + [("b/0", i, "ungraded", "3", "3") for i in range(4)]
    + [("b/1", i, s, "4", "4") for i, s in enumerate(["incorrect", "correct", "error", "correct"])])
GREEDY = sample_rows([("a/0", 0, "correct", "1", "1"), ("a/1", 0, "incorrect", "5", "5"), ("b/1", 0, "correct", "4", "4")])


# ------------------------------------------------------------------------------ the schemas writers use


def test_writers_produce_the_named_schemas(tmp_path):
    """The synthesis stage's question table, the SFT dataset parts and the stored sample parts have exactly the
    schemas lib.schemas names; the sampler's row columns are the ones lib.sampling emits."""
    from lib.sampling import SAMPLE_COLUMNS as sampler_emits

    assert question_table([]).schema.equals(QUESTION_SCHEMA)
    writer = DatasetWriter(tmp_path / "data")
    assert writer.close() == ["part-00000.parquet"]
    assert pq.read_schema(tmp_path / "data" / "part-00000.parquet").equals(SFT_SCHEMA)
    part = SampleStore(tmp_path / "eval").write("samples", SAMPLES)
    assert pq.read_schema(part).equals(SAMPLE_SCHEMA)
    assert tuple(sampler_emits) == SAMPLER_COLUMNS


def test_load_pairs_rows_are_sft_pairs(tmp_path):
    """An SFT source's rows are SFTPair records (id, question, solution), equal to the plain tuples callers unpack."""
    from lib.sft_data import load_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"id": "p1", "question": "What is 2 + 2 here?", "solution": "It is \\boxed{4}."}) + "\n")
    (pair,) = load_pairs(str(path))
    assert isinstance(pair, SFTPair) and pair.solution == "It is \\boxed{4}."
    assert pair == ("p1", "What is 2 + 2 here?", "It is \\boxed{4}.")


# ---------------------------------------------------------------------------------- column checks


def test_sample_part_without_a_column_names_the_column_and_the_part(tmp_path):
    """A samples/ part lacking ``status`` (hand-written, another version) is refused by name, with its path."""
    directory = tmp_path / "samples"
    directory.mkdir()
    part = directory / "part-handmade.parquet"
    pq.write_table(SAMPLES.drop_columns(["status"]), part)
    with pytest.raises(SchemaError, match=r"part-handmade\.parquet: missing column 'status'") as err:
        SampleStore(tmp_path).read("samples", ["question_id", "sample_idx", "status"])
    assert isinstance(err.value, DataError)  # the jobs' clean-error path catches it
    # a part without finish_reason is still accepted (read as null), as before
    pq.write_table(SAMPLES.drop_columns(["finish_reason"]), part)
    assert SampleStore(tmp_path).read("samples", ["question_id", "status"]).num_rows == SAMPLES.num_rows


def test_question_part_without_a_column_names_the_column_and_the_part(tmp_path):
    """Synthesis questions/ parts are checked against QUESTION_COLUMNS when read, both in full and streamed."""
    qdir = tmp_path / "questions"
    qdir.mkdir()
    row = {c: None for c in QUESTION_COLUMNS} | {"question_id": "s/q0", "status": "kept", "votes": 1, "signature": [1]}
    pq.write_table(question_table([row]).drop_columns(["signature"]), qdir / "part-000001.parquet")
    with pytest.raises(SchemaError, match=r"questions/part-000001\.parquet: missing column 'signature'"):
        read_questions(qdir)
    with pytest.raises(SchemaError, match="missing column 'signature'"):
        list(PartReader(qdir).rows(["question_id", "status"]))


def test_grade_and_store_refuses_rows_without_a_sampler_column_before_writing(tmp_path):
    """The grading stage's first batch must carry the sampler's columns; without ``finish_reason`` nothing is
    graded or stored. With the golds from the driver (a re-grade), ``gold`` and ``kind`` are not needed."""
    batch = {c: ["a/0"] if c == "question_id" else ["x"] for c in SAMPLER_COLUMNS if c != "finish_reason"}
    stage = GradeAndStore(str(tmp_path), timeout_s=5.0)
    with pytest.raises(SchemaError, match=r"grade-and-store input rows: missing column 'finish_reason'"):
        stage(batch)
    assert not list(tmp_path.rglob("*.parquet"))
    regrade = GradeAndStore(str(tmp_path), timeout_s=5.0, golds={"a/0": "1"})
    rows = {"question_id": ["a/0"], "dataset": ["a"], "sample_idx": [0], "text": ["\\boxed{1}"], "num_tokens": [3],
            "finish_reason": ["stop"], "error": [None]}
    try:
        summary = regrade(rows, kind="samples")
    finally:
        regrade.grader.close()
        stage.grader.close()
    assert summary["num_correct"] == [1] and len(SampleStore(tmp_path).parts("samples")) == 1


def test_synthesis_stage_refuses_seed_rows_without_a_column(tmp_path):
    """The synthesis stage names a missing seed column before sending any request."""
    stage = SynthesizeSeeds({"base_url": "http://127.0.0.1:9/v1", "model": "m"}, {}, str(tmp_path / "cache.sqlite"))
    batch = {"seed_id": ["s"], "dataset": ["gsm8k"], "question": ["q"], "level": [""], "type": [""]}
    try:
        with pytest.raises(SchemaError, match="seed rows: missing column 'answer'"):
            asyncio.run(stage(batch))
    finally:
        stage.grader.close()


def test_metrics_refuse_sample_rows_without_canonical():
    """compute_metrics names the missing input column rather than failing inside pyarrow."""
    with pytest.raises(SchemaError, match="metrics: the samples rows: missing column 'canonical'"):
        compute_metrics(QUESTIONS, SAMPLES.drop_columns(["canonical"]), GREEDY, 4)
    with pytest.raises(SchemaError, match="metrics: the greedy rows: missing column 'status'"):
        compute_metrics(QUESTIONS, SAMPLES, GREEDY.drop_columns(["status"]), 4)


# ------------------------------------------------------------------------------------- metrics.json


def test_metrics_json_round_trips_through_the_typed_entry(tmp_path):
    """A real small run's metrics (levels, types, an ungraded set, select@k, an adaptive run) written to
    metrics.json and read back as MetricsEntry give back exactly the written dict, key for key."""
    grader = {"grader_version": "g", "timeout_s": 5.0}
    full = compute_metrics(QUESTIONS, SAMPLES, GREEDY, 4, selection=["majority", "arithmetic_checked"])
    adaptive = compute_adaptive_metrics(QUESTIONS, SAMPLES, GREEDY, 4)
    for name, metrics in (("full", full), ("adaptive", adaptive)):
        path = tmp_path / f"{name}.json"
        write_metrics_json(path, metrics, grader)
        written = json.loads(path.read_text())
        assert written == {group: {**entry, "grader": grader} for group, entry in metrics.items()}
        typed = read_metrics_json(path)
        assert {group: entry.to_json_dict() for group, entry in typed.items()} == written
        assert [list(e.to_json_dict()) for e in typed.values()] == [list(e) for e in written.values()]
    typed = read_metrics_json(tmp_path / "full.json")
    assert set(typed) == {"a", "a/level=Level 1", "a/type=T", "b"}
    assert typed["a"].pass_at_k == {"1": pytest.approx(3 / 8), "2": pytest.approx((1 / 2 + 5 / 6) / 2), "4": 1.0}
    assert typed["a"].select_at_k["majority"] == typed["a"].maj_at_k and typed["a"].has_accuracy
    assert typed["b"].num_questions == 1 and typed["b"].num_ungraded_questions == 1
    assert typed["b"].status_counts["ungraded"] == 4 and typed["b"].grader == grader
    adaptive_typed = read_metrics_json(tmp_path / "adaptive.json")["a"]
    assert adaptive_typed.adaptive and adaptive_typed.maj_at_k is None and adaptive_typed.samples_full == 8


def test_stored_metrics_json_files_round_trip_unchanged():
    """Every metrics.json of the stored `make demo` run (an older writer: no pass@every_k) reads back as typed
    entries and writes back the same keys and values."""
    paths = sorted(RUN.rglob("metrics.json"))
    assert len(paths) == 5
    for path in paths:
        raw = json.loads(path.read_text())
        assert {g: e.to_json_dict() for g, e in read_metrics_json(path).items()} == raw


def test_malformed_metrics_entry_names_file_group_and_key(tmp_path):
    """A metrics.json entry with a wrong value type, or an unknown key, is refused naming file, group and key."""
    good = {"num_questions": 1, "samples_per_question": 2, "status_counts": {"correct": 1}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"gsm8k": {**good, "pass@k": {"1": "high"}}}))
    with pytest.raises(SchemaError, match=r"metrics\.json: entry 'gsm8k': key 'pass@k\.1'"):
        read_metrics_json(path)
    path.write_text(json.dumps({"gsm8k": {**good, "pass@kk": {}}}))
    with pytest.raises(SchemaError, match=r"entry 'gsm8k': key 'pass@kk': Extra inputs are not permitted"):
        read_metrics_json(path)
    assert MetricsEntry.model_validate(good).to_json_dict() == good
