"""lib.cli, the command line every job shares: config errors name file, line and key and exit 2, a failure the
job names exits 1, --dry-run prints the plan and never runs the job, job flags set their key."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from lib import cli
from lib.config import ConfigError, StrictModel
from lib.data import DataError
from lib.plan import StagePlan

REPO = Path(__file__).resolve().parents[2]


class Job(StrictModel):
    limit: int = Field(1, ge=1)
    eval_dir: str | None = None


class Refused(RuntimeError):
    pass


def must_not_run(config: Job):
    raise AssertionError(f"run was called with {config}")


def test_unknown_key_names_file_line_and_key(tmp_path):
    """An unknown key in the file is a ConfigError naming FILE:LINE and the key; the job does not run."""
    path = tmp_path / "job.yaml"
    path.write_text("limit: 2\nlimt: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: key 'limt': Extra inputs are not permitted"):
        cli.main(["--config", str(path)], Job, must_not_run, "doc", "e.g. limit=2")


def test_overrides_and_flags_reach_run():
    """key=value overrides and a job flag (a path stays a string, even one YAML would read as a number) reach run."""
    got = cli.main(["limit=4", "--eval-dir", "2024"], Job, lambda c: c, "doc", "e.g. limit=2",
                   flags={"--eval-dir": ("eval_dir", "an evaluation directory")})
    assert (got.limit, got.eval_dir) == (4, "2024")


def test_dry_run_prints_the_plan_and_never_runs(capsys):
    """--dry-run goes to the job's plan and exits 0 when it fits; run is not called."""
    plans = []

    def plan(config: Job) -> list:
        plans.append(config.limit)
        return [StagePlan("demo stage", [{"CPU": 1.0}], {"questions": config.limit})]

    with pytest.raises(SystemExit) as exc:
        cli.main(["--dry-run", "limit=3"], Job, must_not_run, "doc", "e.g. limit=2", plan=plan)
    assert exc.value.code == 0 and plans == [3]
    out = capsys.readouterr().out
    assert "1. demo stage: 1 bundles, 1 CPUs, 0 GPUs  [fits]" in out and "   questions 3" in out


def test_dry_run_is_offered_only_with_a_plan(capsys):
    """A job without a plan has no --dry-run flag: argparse refuses it with exit 2."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--dry-run"], Job, must_not_run, "doc", "e.g. limit=2")
    assert exc.value.code == 2 and "unrecognized arguments: --dry-run" in capsys.readouterr().err


@pytest.mark.parametrize("error,code,message", [
    (ConfigError("limit: must be >= 1"), 2, "error: limit: must be >= 1"),
    (DataError("file not found: x.jsonl"), 2, "error: file not found: x.jsonl"),
    (Refused("teacher at http://x cannot connect"), 1, "error: teacher at http://x cannot connect"),
])
def test_entry_turns_errors_into_exit_codes(capsys, error, code, message):
    """entry(): config and data errors exit 2, a failure the job names (errors=...) exits 1, each as one line."""
    def main():
        raise error

    with pytest.raises(SystemExit) as exc:
        cli.entry(main, show=str, errors=(Refused,))
    if code == 2:
        assert exc.value.code == 2 and capsys.readouterr().err == message + "\n"
    else:  # SystemExit(message): Python prints the message to stderr and exits 1
        assert exc.value.code == message


def test_entry_lets_an_unnamed_failure_raise_and_prints_the_summary(capsys):
    """An error the job does not name keeps its traceback; a finished job prints show(summary)."""
    def broken():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        cli.entry(broken, show=str)
    cli.entry(lambda: {"rows": 3}, show=lambda s: f"rows {s['rows']}")
    assert capsys.readouterr().out == "rows 3\n"


@pytest.mark.parametrize("module", ["jobs.evaluate", "jobs.synthesize", "jobs.train_sft", "jobs.analyze_errors",
                                    "jobs.pipeline", "jobs.score"])
def test_every_job_reports_a_bad_key_the_same_way(tmp_path, module):
    """`python -m jobs.X --config FILE` with an unknown key: exit 2, `error: invalid config:` naming FILE:LINE
    and the key, nothing else on stderr, for every job."""
    path = tmp_path / "bad.yaml"
    path.write_text("# a config with a typo\nno_such_key: 1\n")
    out = subprocess.run([sys.executable, "-m", module, "--config", str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    lines = out.stderr.splitlines()  # the pipeline also names its required key `sizes`
    assert lines[0] == "error: invalid config:" and all(line.startswith(f"  {path}") for line in lines[1:])
    assert f"  {path}:2: key 'no_such_key': Extra inputs are not permitted" in lines
