"""The SFT job with the shipped default-CPU config: SmolLM2-135M on 2 CPU workers (its own module: `make
test`'s xdist workers take a module at a time)."""

import pytest

from jobs.train_sft import main
from tests.jobs.test_train_sft import steps

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def test_default_cpu_config_lowers_the_loss_and_exports(tmp_path):
    """The shipped default-CPU config (SmolLM2-135M, FSDP2, 2 workers, its lr, sequence length and packing),
    shortened to 2 steps on one repeated batch of 2, one example per worker (a step costs about 45 s here at
    the config's batch of 8, compute that grows with the batch; and SmolLM2's loss on new GSM8K examples need
    not fall within a few steps): the second step's loss on the same examples is lower, a checkpoint is kept
    per step and the HF export is written."""
    out = tmp_path / "default"
    main(["--config", "jobs/configs/train_sft_default_cpu.yaml", f"output_dir={out}", "data.limit=2",
          "global_batch_size=2", "epochs=2", "checkpoint_every=1"])
    run = steps(out)
    assert sorted(run) == [1, 2] and sorted(run[1]["batch"]) == sorted(run[2]["batch"]) == list(range(2))
    assert run[2]["loss"] < run[1]["loss"], run
    assert (out / "hf" / "model.safetensors").exists()
    assert len(list((out / "run").glob("checkpoint_*/trainer_state.json"))) == 2  # steps 1 and 2
