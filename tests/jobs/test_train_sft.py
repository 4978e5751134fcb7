"""SFT on Ray Train with 2 CPU workers (gloo): FSDP2 and DeepSpeed ZeRO-3 give the same losses and lower
them; SIGKILL + rerun equals an uninterrupted run. (The base model's export through vLLM and Serve, and the
default-CPU config, are in their own modules: test_train_sft_export.py, test_train_sft_default.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.train_sft import main

REPO = Path(__file__).resolve().parents[2]
TINY = "jobs/configs/train_sft_tiny.yaml"
pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def steps(out: Path) -> dict[int, dict]:
    """metrics.jsonl by step (a step logged twice, before and after a kill, keeps its last record)."""
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


# 8 examples, a global batch of 8, 6 epochs: the same examples every step (each step is one epoch), a
# checkpoint every 2 steps. The FSDP run is also the uninterrupted run the SIGKILL test compares against.
REPEATED = ["--config", TINY, "data.limit=8", "global_batch_size=8", "epochs=6", "max_steps=null", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def repeated_batch_runs(ray_cluster, tmp_path_factory) -> dict[str, Path]:
    """The output directories of one uninterrupted run per strategy on REPEATED."""
    outs = {}
    for strategy in ("fsdp", "deepspeed"):
        outs[strategy] = tmp_path_factory.mktemp("sft") / strategy
        main([*REPEATED, f"output_dir={outs[strategy]}", f"strategy={strategy}"])
    return outs


def test_fsdp_and_deepspeed_lower_the_loss_on_a_repeated_batch_identically(repeated_batch_runs):
    """Both strategies lower the loss at every step on the repeated batch and agree to 1e-4; both export an HF
    directory and keep the last 2 checkpoints (steps 4 and 6)."""
    runs = {}
    for strategy, out in repeated_batch_runs.items():
        runs[strategy] = steps(out)
        assert sorted(runs[strategy]) == [1, 2, 3, 4, 5, 6]
        assert all(sorted(r["batch"]) == list(range(8)) for r in runs[strategy].values())
        losses = [runs[strategy][s]["loss"] for s in range(1, 7)]
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        hf = out / "hf"
        assert {"config.json", "model.safetensors", "tokenizer.json", "training_args.json"} <= {p.name for p in hf.iterdir()}
        assert json.loads((hf / "training_args.json").read_text())["steps"] == 6
        kept = sorted(json.loads((p / "trainer_state.json").read_text())["step"] for p in (out / "run").glob("checkpoint_*") if p.is_dir())
        assert kept == [4, 6]
    for s in range(1, 7):
        assert runs["fsdp"][s]["loss"] == pytest.approx(runs["deepspeed"][s]["loss"], abs=1e-4)
        assert runs["fsdp"][s]["batch"] == runs["deepspeed"][s]["batch"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(repeated_batch_runs, tmp_path):
    """Kill the job (SIGKILL, its whole process group, its own Ray) after the step-2 checkpoint; the rerun
    resumes there (at an epoch boundary: mid-epoch positions are unit-tested in tests/lib/test_stages.py):
    every step consumes the same examples in the same order as the uninterrupted FSDP run, examples_seen
    agrees, and the losses agree to 1e-5."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.train_sft", *REPEATED, f"output_dir={killed}"], cwd=REPO,
                            env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not list((killed / "run").glob("checkpoint_*/trainer_state.json")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = max(steps(killed))
    assert 2 <= done_before < 6, f"killed at step {done_before}"
    summary = main([*REPEATED, f"output_dir={killed}"])
    assert summary.resumed_from is not None
    a, b = steps(repeated_batch_runs["fsdp"]), steps(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in range(1, 7):
        assert a[s]["batch"] == b[s]["batch"] and a[s]["examples_seen"] == b[s]["examples_seen"] == 8 * s
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], abs=1e-5)
    assert len({tuple(b[s]["batch"]) for s in range(1, 7)}) > 1  # reshuffled per epoch: the order is checked
