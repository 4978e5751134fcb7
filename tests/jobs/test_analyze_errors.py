"""jobs.analyze_errors on a hand-made evaluation directory: exact arithmetic labels and rates, the judge pass
through the stand-in teacher (labels, a failed request counted as unlabelled, cached rerun), bad input named."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.analyze_errors import main
from lib.config import ConfigError
from lib.data import load_dataset
from tests.fake_teacher import FakeTeacher

WRONG_CALC = "She has 16 - 3 - 4 = 9 eggs. 9 * 2 = 20 dollars. The answer is \\boxed{20}."
WRONG_REASONING = "She sells 16 eggs. 16 * 2 = 32 dollars. The answer is \\boxed{32}."
RIGHT = "16 - 3 - 4 = 9 and 9 * 2 = 18. The answer is \\boxed{18}."


@pytest.fixture
def eval_dir(tmp_path):
    """Two GSM8K test questions x 3 samples: 2 correct, 3 incorrect (2 with a wrong equation), 1 no_answer."""
    directory = tmp_path / "eval"
    (directory / "samples").mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump({"model": "default", "datasets": ["gsm8k"], "limit": 2,
                                                           "_provenance": {"ignored": True}}))
    q0, q1 = (q.id for q in load_dataset("gsm8k", split="test", limit=2))
    rows = [(q0, 0, RIGHT, "correct"), (q0, 1, WRONG_CALC, "incorrect"), (q0, 2, WRONG_REASONING, "incorrect"),
            (q1, 0, "I do not know", "no_answer"), (q1, 1, "2 + 2 = 5. The answer is \\boxed{5}.", "incorrect"),
            (q1, 2, "The answer is \\boxed{3}.", "correct")]
    table = pa.table({"question_id": [r[0] for r in rows], "sample_idx": [r[1] for r in rows],
                      "text": [r[2] for r in rows], "status": [r[3] for r in rows],
                      "extracted": ["x"] * 6, "gold": ["18", "18", "18", "3", "3", "3"]})
    pq.write_table(table, directory / "samples" / "part-0.parquet")
    return directory


def test_arithmetic_labels_every_incorrect_sample_and_rates_are_over_all_samples(eval_dir):
    result = main(["--eval-dir", str(eval_dir)])
    assert result.num_samples == 6 and result.num_incorrect == 3
    arithmetic = result.methods["arithmetic"]
    assert arithmetic["counts"] == {"calculation": 2, "reasoning": 0, "no_slip_found": 1, "unlabelled": 0}
    assert arithmetic["rates"]["calculation_rate"] == pytest.approx(2 / 6)
    assert arithmetic["rates"]["no_slip_found_rate"] == pytest.approx(1 / 6)
    labels = [json.loads(line) for line in (eval_dir / "error_analysis" / "labels.jsonl").read_text().splitlines()]
    assert [(r["sample_idx"], r["label"], r["wrong_equations"]) for r in labels] == [
        (1, "calculation", ["9 * 2 = 20"]), (2, "no_slip_found", []), (1, "calculation", ["2 + 2 = 5"])]


def judge(messages, seed):
    return "The set-up is right but 9 * 2 is 18.\nLabel: calculation" if "9 * 2 = 20" in messages[-1]["content"] \
        else "**Label:** reasoning"


def test_judge_labels_through_an_openai_compatible_server_and_a_failed_request_is_counted(eval_dir, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "k")
    with FakeTeacher(responder=judge, model="judge", faults=["401"]) as teacher:  # the first request fails for good
        args = ["--eval-dir", str(eval_dir), "arithmetic=false", f"judge.base_url={teacher.base_url}",
                "judge.model=judge", "judge.api_key_env=JUDGE_KEY", "judge.max_concurrency=1"]
        result = main(args)
        j = result.methods["judge"]
        assert j["num_judged"] == 3 and j["num_failed"] == 1 and "arithmetic" not in result.methods
        assert j["counts"]["calculation"] + j["counts"]["reasoning"] == 2 and j["counts"]["unlabelled"] == 1
        sent = len(teacher.log)
        again = main(args)  # answered requests come from the cache; only the failed one is sent again
        assert len(teacher.log) == sent + 1
        assert again.methods["judge"]["counts"] == {"calculation": 1, "reasoning": 2, "no_slip_found": 0, "unlabelled": 0}
        assert again.methods["judge"]["rates"]["calculation_rate"] == pytest.approx(1 / 6)


def test_judge_max_samples_takes_a_seeded_subset_and_scales_rates(eval_dir):
    with FakeTeacher(responder=judge, model="judge") as teacher:
        result = main(["--eval-dir", str(eval_dir), f"judge.base_url={teacher.base_url}", "judge.model=judge",
                       "judge.api_key_env=NO_SUCH_ENV_FOR_TEST", "judge_max_samples=2"])
    j = result.methods["judge"]
    assert j["num_judged"] == 2 and j["rates_scaled_from_judged"] is True
    labelled = j["counts"]["calculation"] + j["counts"]["reasoning"]
    assert labelled == 2
    assert j["rates"]["calculation_rate"] + j["rates"]["reasoning_rate"] == pytest.approx(3 / 6)


def test_not_an_evaluation_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"--eval-dir {tmp_path}: not an output directory of jobs.evaluate"):
        main(["--eval-dir", str(tmp_path)])


def test_unknown_option_is_named(eval_dir):
    with pytest.raises(ConfigError, match="key 'judge_max_sample'"):
        main(["--eval-dir", str(eval_dir), "judge_max_sample=3"])
