"""The evaluation job's GSM-Symbolic datasets: bare names and refs with ``instances`` and ``seed``."""

from __future__ import annotations

import pytest

from jobs.evaluate import EvaluateConfig, load_questions
from lib.config import ConfigError, load_config


def test_bare_name_gives_one_instance_per_template():
    """``datasets=[gsm_symbolic]`` with ``limit=4`` (evaluate_tiny): the first 4 templates, one instance each."""
    config = load_config(EvaluateConfig, "jobs/configs/evaluate_tiny.yaml", ["datasets=[gsm_symbolic]"])
    assert config.limit == 4
    assert [q.id for q in load_questions(config)] == [
        "gsm_symbolic/0000/gsm8k-test-473/0", "gsm_symbolic/0001/gsm8k-test-103/0",
        "gsm_symbolic/0002/gsm8k-test-184/0", "gsm_symbolic/0003/gsm8k-test-740/0"]


def test_ref_options_instances_and_seed_reach_the_generator():
    """A ref's ``instances`` and ``seed`` pick how many instances per template and which ones."""
    refs = "datasets=[{name: gsm_symbolic_p1, instances: 3, seed: 5}, gsm_symbolic_original]"
    config = load_config(EvaluateConfig, None, [refs, "limit=2"])
    ids = [q.id for q in load_questions(config)]
    assert ids == [f"gsm_symbolic_p1/{t}/{i}" for t in ("0000/gsm8k-test-473", "0001/gsm8k-test-103") for i in range(3)] + [
        "gsm_symbolic_original/0000/gsm8k-test-473", "gsm_symbolic_original/0001/gsm8k-test-103"]
    other = load_config(EvaluateConfig, None, [refs.replace("seed: 5", "seed: 6"), "limit=2"])
    assert [q.question for q in load_questions(other)][:6] != [q.question for q in load_questions(config)][:6]


def test_instances_below_one_is_a_config_error():
    """``instances: 0`` is refused by the config, naming the key."""
    with pytest.raises((ConfigError, ValueError), match="instances"):
        load_config(EvaluateConfig, None, ["datasets=[{name: gsm_symbolic, instances: 0}]"])
