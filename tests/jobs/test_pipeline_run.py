"""jobs.pipeline end to end on the tiny random model with the stand-in teacher: SIGKILL after the synthesis
stage, rerun to the report without redoing finished stages (0 new teacher requests), a third run skips all.
The killed run is a subprocess with its own Ray (the kill takes its whole process group); the reruns call the
pipeline in this process, on the suite's Ray (what they check is the bookkeeping on disk)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.grading import settings as grader_settings
from tests.fake_teacher import FakeTeacher

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def arguments(out: Path, teacher: FakeTeacher) -> list[str]:
    return ["--config", str(REPO / "jobs/configs/pipeline_demo.yaml"),
            "model=tiny", "sizes=[4]", "serve_teacher=null", f"output_dir={out}",
            f"synthesize.teacher.base_url={teacher.base_url}", "synthesize.teacher.model=fake-teacher",
            "synthesize.seed_limit=4", "synthesize.stage.questions_per_seed=1", "synthesize.stage.solutions_per_question=4",
            "evaluate.limit=2", "evaluate.samples_per_question=4", "evaluate.max_tokens=16",
            "evaluate.resources.samples_per_request=4", "train.max_seq_len=256", "train.global_batch_size=4"]


def run(cmd: list[str], log: Path, kill_when: Path | None = None) -> int:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if kill_when is not None and kill_when.exists():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return -9
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode


def stages(out: Path) -> dict[str, str]:
    return {s["stage"]: s["state"] for s in json.loads((out / "stages.json").read_text())}


def test_pipeline_killed_after_synthesis_resumes_to_the_report_and_a_rerun_skips_everything(ray_cluster, tmp_path):
    from jobs.pipeline import main as pipeline

    out = tmp_path / "run"
    with FakeTeacher() as teacher:
        argv = arguments(out, teacher)
        cmd = [sys.executable, "-m", "jobs.pipeline", *argv]
        assert run(cmd, tmp_path / "first.log", kill_when=out / "synthesize" / ".done.json") == -9
        assert (out / "base" / ".done.json").exists() and not (out / "report.md").exists()
        requests_first = len(teacher.log)
        assert requests_first > 0

        pipeline(argv)
        assert len(teacher.log) == requests_first  # the synthesis stage was not redone
        second = stages(out)
        assert second["evaluate base"] == "skipped" and second["synthesize"] == "skipped"
        ran = ["train synthetic-4", "evaluate synthetic-4", "train real-4", "evaluate real-4",
               "error analysis base", "error analysis synthetic-4", "error analysis real-4"]
        assert [second[s] for s in ran] == ["ran"] * len(ran)

        pipeline(argv)
        assert set(stages(out).values()) == {"skipped"}
        assert len(teacher.log) == requests_first

    subsets = json.loads((out / "subsets" / "subsets.json").read_text())
    assert subsets["sources"]["real"]["sizes"] == [4] and subsets["sources"]["synthetic"]["sizes"] == [4]
    for name in ("synthetic-4", "real-4"):
        assert (out / "sft" / name / "hf" / "config.json").exists()
        metrics = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert metrics["gsm8k"]["num_questions"] == 2 and metrics["gsm8k"]["samples_per_question"] == 4
        assert sum(metrics["gsm8k"]["status_counts"].values()) == 8
        errors = json.loads((out / "eval" / name / "error_analysis" / "result.json").read_text())
        assert errors["num_samples"] == 8 and errors["num_incorrect"] == metrics["gsm8k"]["status_counts"]["incorrect"]
    report = (out / "report.md").read_text()
    for row in ("| base | base | 0 | 2 |", "| synthetic-4 | synthetic | 4 | 2 |", "| real-4 | real | 4 | 2 |"):
        assert row in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "src=\"figures/" not in html  # self-contained
    summary = json.loads((out / "summary.json").read_text())
    assert [s["state"] for s in summary["stages"]] == ["skipped"] * 9 and summary["report"]["md"] == str(out / "report.md")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["base"] == "tiny" and manifest["prompt"]["name"] == "boxed"
    assert manifest["grader"] == grader_settings()
