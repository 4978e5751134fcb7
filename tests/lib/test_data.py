"""Tests for lib.data: every shared dataset loads into the common schema with exact gold answers,
and bad input fails with a message naming the file, line and field."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib.data import (
    DATASETS,
    SHARED_DATA_DIR,
    DataError,
    Question,
    dataset_names,
    gsm8k_gold,
    load_dataset,
    load_file,
    math_gold,
    to_text,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Row counts from ../shared/data/README.md.
ROW_COUNTS = [
    ("gsm8k", "train", 7473),
    ("gsm8k", "test", 1319),
    ("math", "train", 7500),
    ("math", "test", 5000),
    ("math500", "test", 500),
    ("gsm8k_xwin_eval", "test", 1319),
    ("svamp", "test", 1000),
    ("asdiv", "test", 2215),
    ("mawps", "test", 2065),
    ("college_math", "test", 2818),
    ("minerva_math", "test", 272),
    ("olympiadbench", "test", 675),
    ("aime24", "test", 30),
    ("amc23", "test", 40),
    ("gaokao2023en", "test", 385),
    ("sat_math", "test", 32),
    ("hungarian_exam", "test", 33),
]


def _rows(relative: str) -> list[dict]:
    with open(SHARED_DATA_DIR / relative, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_registry_lists_every_shared_dataset_and_split():
    """The registry covers exactly the datasets and splits of the README table (plus the generated GSM-Symbolic sets)."""
    from lib.gsm_symbolic import DATASETS as GSM_SYMBOLIC

    assert dataset_names() == sorted({name for name, _, _ in ROW_COUNTS} | set(GSM_SYMBOLIC))
    assert sorted((n, s) for n, spec in DATASETS.items() for s in spec.files) == sorted(
        (n, s) for n, s, _ in ROW_COUNTS
    )


@pytest.mark.parametrize(("name", "split", "num_rows"), ROW_COUNTS)
def test_registry_dataset_loads_with_exact_row_count_and_unique_ids(name, split, num_rows):
    """Each registry split loads every row, with unique ids, non-empty questions and its file as source."""
    questions = load_dataset(name, split=split)
    assert len(questions) == num_rows
    assert len({q.id for q in questions}) == num_rows
    assert all(isinstance(q, Question) and q.dataset == name and q.question for q in questions)
    assert {q.source for q in questions} == {str(SHARED_DATA_DIR / DATASETS[name].files[split])}


def test_ids_are_row_indices_or_math_unique_ids_and_stable():
    """Ids are "<name>/<split>/<row>" (or MATH's unique_id path) and identical across loads."""
    assert [q.id for q in load_dataset("gsm8k", limit=2)] == ["gsm8k/test/0", "gsm8k/test/1"]
    assert load_dataset("math", limit=1)[0].id == "math/test/algebra/1.json"
    assert load_dataset("math", split="train", limit=1)[0].id == "math/train/algebra/0.json"
    assert [q.id for q in load_dataset("svamp")] == [q.id for q in load_dataset("svamp")]


def test_gsm8k_gold_is_the_number_after_hashes_without_commas():
    """GSM8K row 0 is "18"; row 146's "#### 2,125" becomes "2125"."""
    questions = load_dataset("gsm8k")
    assert questions[0].answer == "18"
    assert _rows("gsm8k/test.jsonl")[146]["answer"].endswith("#### 2,125")
    assert questions[146].answer == "2125"
    assert not any("," in q.answer for q in questions)


def test_gsm8k_xwin_eval_matches_gsm8k_row_for_row():
    """Xwin's own GSM8K eval file ("2,125"-style answers) gives the same questions and golds as GSM8K test."""
    xwin, gsm8k = load_dataset("gsm8k_xwin_eval"), load_dataset("gsm8k")
    assert [(q.question, q.answer) for q in xwin] == [(q.question, q.answer) for q in gsm8k]


def test_math_gold_keeps_nested_braces():
    """A MATH test answer with nested braces is the whole last \\boxed{} content."""
    by_id = {q.id: q for q in load_dataset("math")}
    question = by_id["math/test/algebra/1275.json"]
    assert question.answer == "\\frac{\\sqrt{3}}{3}"
    assert (question.level, question.type) == ("Level 3", "Algebra")


def test_math_train_has_exactly_two_empty_boxed_answers():
    """Two original MATH train solutions box nothing (\\boxed{}); their gold stays "" rather than failing."""
    empty = [q.id for q in load_dataset("math", split="train") if not q.answer]
    assert empty == ["math/train/number_theory/7115.json", "math/train/number_theory/7117.json"]


def test_math500_gold_is_its_answer_field_and_agrees_with_boxed_solution():
    """MATH500 gold is the `answer` field; all 500 equal math_gold(solution); ids/levels match MATH test."""
    rows = _rows("math500/test.jsonl")
    questions = load_dataset("math500")
    assert questions[0].answer == rows[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert [q.answer for q in questions] == [row["answer"] for row in rows]
    assert sum(math_gold(row["solution"]) == row["answer"] for row in rows) == 500
    math_test = {q.id.removeprefix("math/"): q for q in load_dataset("math")}
    for question in questions:
        source = math_test[question.id.removeprefix("math500/")]
        assert (question.question, question.level) == (source.question, source.level)


def test_numeric_golds_have_no_float_artifacts():
    """Float golds print like the source number: 27.0 -> "27", 0.6666666667 stays, svamp 145.0 -> "145"."""
    assert load_dataset("amc23")[0].answer == "27"
    assert load_dataset("svamp")[0].answer == "145"
    mawps = [q.answer for q in load_dataset("mawps")]
    assert "0.6666666667" in mawps and not any(a.endswith(".0") for a in mawps)
    assert (to_text(5.0), to_text(0.5), to_text(-1.0), to_text(["$1$", "2"])) == ("5", "0.5", "-1", "$1$, 2")


def test_ood_question_and_answer_mapping():
    """SVAMP body gets a period, ASDiv drops units, SAT lists choices, OlympiadBench takes final_answer."""
    svamp = load_dataset("svamp")[0]
    assert svamp.question == (
        "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized into 2 "
        "groups and oranges are organized into 93 groups. How big is each group of bananas?"
    )
    asdiv = load_dataset("asdiv")[0]
    assert (asdiv.question, asdiv.answer) == (
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?",
        "9",
    )
    sat = load_dataset("sat_math")[0]
    assert sat.question.endswith("\nAnswer Choices: (A) $f(-6)=0$ (B) $f(6)=-6$ (C) $f(-6)=6$ (D) $f(0)=-6$")
    assert sat.answer == "A"
    olympiad = load_dataset("olympiadbench")
    assert (olympiad[0].answer, olympiad[0].type) == ("2", "Combinatorics")
    assert olympiad[5].answer == "$(1,8,19), (2,7,13), (4,5,7)$"
    assert load_dataset("minerva_math")[0].answer == "1.6"
    assert load_dataset("mawps")[0].type == "singleeq"


def test_sources_without_gold_keep_empty_answers():
    """gaokao2023en rows 167 and 192 and all 33 Hungarian exam rows have gold "" (never invented)."""
    gaokao = load_dataset("gaokao2023en")
    assert [i for i, q in enumerate(gaokao) if not q.answer] == [167, 192]
    assert all(q.answer == "" for q in load_dataset("hungarian_exam"))


def test_limit_takes_first_rows_in_file_order():
    """limit=N keeps the first N rows; limit=0 gives none."""
    assert [q.answer for q in load_dataset("gsm8k", limit=3)] == ["18", "3", "70000"]
    assert load_dataset("math", split="train", limit=5) == load_dataset("math", split="train")[:5]
    assert load_dataset("aime24", limit=0) == []


def test_gold_helpers():
    """gsm8k_gold and math_gold extract the final answer and reject text without a marker."""
    assert gsm8k_gold("So 1,000 + 5 = 1,005\n#### 1,005 ") == "1005"
    assert math_gold("so $\\boxed{\\frac{1}{2}}$ and then $\\boxed{\\{1, \\{2\\}\\}}$.") == "\\{1, \\{2\\}\\}"
    with pytest.raises(DataError, match="####"):
        gsm8k_gold("no marker")
    with pytest.raises(DataError, match="boxed"):
        math_gold("no box")


def test_unknown_dataset_name_lists_known_ones():
    """An unknown name is an error listing the registry names."""
    with pytest.raises(DataError, match="unknown dataset 'gsm9k'.*gsm8k.*math500"):
        load_dataset("gsm9k")


def test_missing_split_names_available_splits():
    """A split with no file is an error naming the available splits."""
    with pytest.raises(DataError, match="no split 'train'.*available: test"):
        load_dataset("svamp", split="train")


def test_missing_files_are_named(tmp_path):
    """A missing registry file (wrong data_dir) or user file is an error naming the path."""
    with pytest.raises(DataError, match=f"file not found: gsm8k/test.jsonl; looked in:\n  1. {tmp_path / 'gsm8k' / 'test.jsonl'}"):
        load_dataset("gsm8k", data_dir=tmp_path)
    with pytest.raises(DataError, match="file not found: .*nope.jsonl"):
        load_dataset(str(tmp_path / "nope.jsonl"))


def test_data_dir_override_reads_registry_layout(tmp_path):
    """data_dir points the registry at another folder with the same layout."""
    (tmp_path / "gsm8k").mkdir()
    _write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}])
    assert load_dataset("gsm8k", data_dir=tmp_path) == [
        Question("gsm8k/test/0", "gsm8k", "1+1?", "2", source=str(tmp_path / "gsm8k" / "test.jsonl"))
    ]


def test_data_dir_env_var_sets_default(tmp_path):
    """MATHRAY_DATA_DIR sets SHARED_DATA_DIR at import."""
    code = "from lib.data import SHARED_DATA_DIR; print(SHARED_DATA_DIR)"
    env = {"MATHRAY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path), out.stderr


def test_malformed_json_line_names_file_and_line(tmp_path):
    """A bad JSON line is an error naming the file and its line number."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"q": "a", "a": "1"}\n{"q": "b", "a": "2"}\n{"q": "c", "a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: malformed JSON"):
        load_dataset(str(path), columns={"question": "q", "answer": "a"})


def test_missing_field_names_file_line_field_and_available(tmp_path):
    """A row without a mapped field is an error naming file, line, the field and the fields it has."""
    path = _write_jsonl(tmp_path / "rows.jsonl", [{"q": "a", "a": "1"}, {"q": "b", "ans": "2"}])
    with pytest.raises(DataError, match=r"rows\.jsonl: line 2: missing field 'a' \(available: q, ans\)"):
        load_file(path, columns={"question": "q", "answer": "a"})


def test_missing_parquet_column_is_named(tmp_path):
    """A Parquet file without a mapped column is an error naming the column and the available ones."""
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["a"], "final": ["1"]}), path)
    with pytest.raises(DataError, match=r"rows\.parquet: missing column 'answer' \(available: prompt, final\)"):
        load_file(path, columns={"question": "prompt", "answer": "answer"})


def test_empty_file_and_bad_gold_are_errors(tmp_path):
    """An empty file, or a gsm8k-format answer without '####', fails naming the file (and line)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        load_dataset(str(empty))
    path = _write_jsonl(tmp_path / "g.jsonl", [{"question": "a", "answer": "x\n#### 1"}, {"question": "b", "answer": "2"}])
    with pytest.raises(DataError, match=r"g\.jsonl: line 2: field 'answer': no '####'"):
        load_dataset(str(path), answer_format="gsm8k")


def test_bad_column_mapping_is_rejected(tmp_path):
    """columns must map question and answer and only known keys; registry names take no columns."""
    path = _write_jsonl(tmp_path / "rows.jsonl", [{"q": "a", "a": "1"}])
    with pytest.raises(DataError, match="'answer'"):
        load_file(path, columns={"question": "q"})
    with pytest.raises(DataError, match="unknown column key.*prompt"):
        load_file(path, columns={"question": "q", "answer": "a", "prompt": "q"})
    with pytest.raises(DataError, match="columns applies to user files"):
        load_dataset("gsm8k", columns={"question": "q", "answer": "a"})
    with pytest.raises(DataError, match="unknown answer_format 'latex'"):
        load_file(path, columns={"question": "q", "answer": "a"}, answer_format="latex")
    with pytest.raises(DataError, match=r"rows\.json: unsupported file type"):
        load_dataset(str(tmp_path / "rows.json"))


def test_user_jsonl_with_column_mapping_and_boxed_gold(tmp_path):
    """A user JSONL (gzipped here) maps id/question/answer/level/type and extracts a boxed gold."""
    path = tmp_path / "mine.jsonl.gz"
    rows = [
        {"key": "p1", "prompt": "What is 2+3?", "sol": "2+3=\\boxed{5}", "lvl": 1, "kind": "add"},
        {"key": "p2", "prompt": "Half of 1?", "sol": "It is $\\boxed{\\frac{1}{2}}$.", "lvl": None, "kind": "div"},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    columns = {"id": "key", "question": "prompt", "answer": "sol", "level": "lvl", "type": "kind"}
    questions = load_dataset(str(path), columns=columns, answer_format="boxed")
    assert questions == [
        Question("mine/p1", "mine", "What is 2+3?", "5", level="1", type="add", source=str(path)),
        Question("mine/p2", "mine", "Half of 1?", "\\frac{1}{2}", level=None, type="div", source=str(path)),
    ]


def test_user_jsonl_duplicate_ids_are_rejected(tmp_path):
    """Two rows with the same mapped id fail, naming both lines."""
    path = _write_jsonl(tmp_path / "dup.jsonl", [{"i": 1, "q": "a", "a": 1}, {"i": 1, "q": "b", "a": 2}])
    with pytest.raises(DataError, match=r"line 2: duplicate id 'dup/1' \(first at line 1\)"):
        load_file(path, columns={"id": "i", "question": "q", "answer": "a"})


def test_user_parquet_with_column_mapping(tmp_path):
    """A user Parquet file maps columns; ids default to the row index and floats print cleanly."""
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({"prompt": ["a?", "b?", "c?"], "final": [5.0, 0.5, None], "extra": [1, 2, 3]}), path)
    questions = load_file(path, columns={"question": "prompt", "answer": "final"}, dataset="custom", limit=3)
    assert [(q.id, q.dataset, q.question, q.answer) for q in questions] == [
        ("custom/0", "custom", "a?", "5"),
        ("custom/1", "custom", "b?", "0.5"),
        ("custom/2", "custom", "c?", ""),
    ]
    assert load_dataset(str(path), columns={"question": "prompt", "answer": "final"}, limit=1)[0].id == "set/0"
