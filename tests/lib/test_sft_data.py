"""SFT pairs: GSM8K solutions rewritten to end in \\boxed{}, MATH as is, synthesis output, bad files named."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib.data import DataError
from lib.sft_data import gsm8k_solution, load_pairs


def test_gsm8k_solution_drops_calculator_annotations_and_boxes_the_answer():
    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72.\n#### 1,072"
    assert gsm8k_solution(raw) == "Natalia sold 48/2 = 24 clips in May.\nSo 48+24 = 72.\nThe answer is \\boxed{1072}."


def test_registry_pairs():
    (pid, q, s), = load_pairs("gsm8k", limit=1)
    assert pid == "gsm8k/train/0" and q.startswith("Natalia sold clips") and s.endswith("\\boxed{72}.")
    (mid, mq, ms), = load_pairs("math", limit=1)
    assert "\\boxed" in ms and mq


def test_synthesis_output_dir_and_bad_rows(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "question": ["Q1?", "Q2?"], "solution": ["S1 \\boxed{1}", "S2"]}),
                   tmp_path / "data" / "part-00000.parquet")
    assert [p[1:] for p in load_pairs(str(tmp_path))] == [("Q1?", "S1 \\boxed{1}"), ("Q2?", "S2")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "solution": ""}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 1: field 'solution' \(solution\) is missing or empty"):
        load_pairs(str(bad))
    with pytest.raises(DataError, match="neither a registry dataset"):
        load_pairs(str(tmp_path / "nope"))
