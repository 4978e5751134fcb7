"""`--dry-run` on every job: the resolved config's plan against cluster/values.yaml, printed without importing
Ray, vLLM or torch and without creating an output directory; an unschedulable stage is an error."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Runs the job as `python -m jobs.X ...` would, then reports which heavy modules it imported.
PROBE = ("import runpy, sys\n"
         "sys.argv = sys.argv[1:]\n"
         "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
         "except SystemExit as e:\n    code = e.code\n"
         "print('imported:', sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules))\n"
         "sys.exit(code)\n")


def dry_run(module: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", PROBE, module, "--config", f"jobs/configs/{config}.yaml", "--dry-run", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_pipeline_7b_dry_run_prints_every_stage_and_fits():
    """The paper-scale pipeline: 15 stages, each fitting the values' nodes, with its exact work counts."""
    out = dry_run("jobs.pipeline", "pipeline_7b")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    stages = [line for line in lines if line[:3].strip().rstrip(".").isdigit()]
    assert [s.split(":")[0].split(". ", 1)[1] for s in stages] == (
        ["evaluate base", "synthesize"]
        + [x for size in (7473, 15000, 30000, 60000, 120000) for x in (f"train synthetic-{size}", f"evaluate synthetic-{size}")]
        + ["train real-7473", "evaluate real-7473", "error analysis (judge)"])
    assert all(s.endswith("[fits]") for s in stages)
    assert stages[0] == "1. evaluate base: 16 bundles, 40 CPUs, 8 GPUs  [fits]"
    assert lines[lines.index(stages[0]) + 1].startswith(
        "   questions 7,099, samples_per_question 256, samples 1,824,443, requests 21,297,")
    assert stages[2] == "3. train synthetic-7473: 8 bundles, 64 CPUs, 8 GPUs  [fits]"
    assert lines[lines.index(stages[2]) + 1] == "   examples 7,473, epochs 3, global_batch_size 128, steps 177"
    synth = lines[lines.index(stages[1]) + 1]
    assert synth.startswith("   seeds 7,473, questions<= 119,568, solutions<= 478,272, teacher_requests<= 1,076,112,")
    assert synth.endswith("budget_usd 8000.0, spend_cap_usd 8000.0")
    assert "SFT runs left out: real-15000 (at most 7,473 rows)" in out.stdout
    assert lines[-1] == "imported: []"


def test_unschedulable_stage_is_an_error_naming_it():
    """A training worker asking for more CPUs than any node offers stops the dry run with exit 1."""
    out = dry_run("jobs.pipeline", "pipeline_7b", "train.resources.cpus_per_worker=90")
    assert out.returncode == 1
    assert ("error: stage train synthetic-7473: can never be scheduled: one bundle {'CPU': 90.0, 'GPU': 1} is larger "
            "than every node (largest: gpu_workers (p4de.24xlarge, 8 x A100-80GB): 86 CPUs, 8 GPUs)") in out.stderr


@pytest.mark.parametrize("module,config,work", [
    ("jobs.evaluate", "evaluate_tiny", "   questions 4, samples_per_question 8, samples 36, requests 8, "),
    ("jobs.train_sft", "train_sft_tiny", "   examples 48, epochs 1, global_batch_size 8, steps 6"),
    ("jobs.synthesize", "synthesize_tiny", "   seeds 8, questions<= 16, solutions<= 64, teacher_requests<= 144, "),
    ("jobs.evaluate", "evaluate_7b_gpu", "   questions 6,319, samples_per_question 1,024, samples 6,476,975, "),
    ("jobs.train_sft", "train_sft_7b_fsdp", "   examples unknown, epochs 3, global_batch_size 128, steps unknown"),
])
def test_every_job_has_a_dry_run(tmp_path, module, config, work):
    """Each job's --dry-run prints its stage with exact counts, imports no Ray/vLLM/torch, writes nothing."""
    out = dry_run(module, config, f"output_dir={tmp_path / 'out'}")
    assert out.returncode == 0, out.stderr
    assert any(line.startswith(work) for line in out.stdout.splitlines()), out.stdout
    assert out.stdout.splitlines()[-1] == "imported: []"
    assert not (tmp_path / "out").exists()
