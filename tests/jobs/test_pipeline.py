"""jobs.pipeline without engines: config checks before work, nested subsets, stage skipping and refusal."""

import json
from pathlib import Path

import pytest

from jobs.pipeline import PipelineConfig, Stages, checkpoints, nested_subsets, validate_inputs
from lib.config import ConfigError, load_config

DEMO = "jobs/configs/pipeline_demo.yaml"


def test_nested_subsets_are_prefixes_of_one_seeded_order_and_sizes_beyond_the_data_are_left_out():
    pairs = [(f"id{i}", f"q{i}", f"s{i}") for i in range(10)]
    subsets = nested_subsets(pairs, [2, 5, 10, 11], seed=3)
    assert sorted(subsets) == [2, 5, 10]
    assert subsets[5][:2] == subsets[2] and subsets[10][:5] == subsets[5]
    assert sorted(subsets[10]) == pairs  # a permutation: every row once
    assert subsets[10] != pairs  # shuffled, not the file order
    assert nested_subsets(pairs, [2, 5, 10], seed=3) == subsets  # seeded
    assert nested_subsets(pairs, [5], seed=4)[5] != subsets[5]


def test_checkpoint_names_follow_sources_and_made_sizes():
    subsets = {"sources": {"synthetic": {"sizes": [8]}, "real": {"sizes": [8, 32]}}}
    assert checkpoints(subsets) == [("synthetic-8", "synthetic", 8), ("real-8", "real", 8), ("real-32", "real", 32)]


@pytest.mark.parametrize("override, message", [
    ("sizes=[32,8]", "key 'sizes': Value error, must be positive and strictly increasing"),
    ("sizes=[]", "key 'sizes'"),
    ("evaluate.output_dir=x", "evaluate.output_dir is set by the pipeline"),
    ("train.data.source=gsm8k", "train.data is set by the pipeline"),
    ("train.prompt=xwin", "train.prompt 'xwin' != evaluate.prompt 'boxed'"),
    ("synthesize.teacher.base_url=http://x/v1", "serve_teacher starts the teacher"),
    ("sources=[fake]", "key 'sources.0'"),
    ("evaluate.limt=3", "key 'evaluate.limt': Extra inputs are not permitted"),
    ("train.lr=0", f"{DEMO}:69: key 'train.lr'"),
])
def test_bad_config_is_refused_with_the_key_before_work(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(PipelineConfig, DEMO, [override])
    assert message in str(info.value)


def test_missing_inputs_are_named_before_work(tmp_path):
    config = load_config(PipelineConfig, DEMO, [f"real_data={tmp_path / 'nope.jsonl'}"])
    with pytest.raises(ConfigError, match="real_data: .*nope.jsonl is neither gsm8k, math nor a file"):
        validate_inputs(config)
    config = load_config(PipelineConfig, DEMO, ["serve_teacher.config=serve/configs/missing.yaml"])
    with pytest.raises(ConfigError, match="serve_teacher.config: serve/configs/missing.yaml does not exist"):
        validate_inputs(config)


def test_shipped_pipeline_configs_load_and_their_inputs_exist():
    for path in sorted(Path("jobs/configs").glob("pipeline_*.yaml")):
        validate_inputs(load_config(PipelineConfig, path))


def test_a_finished_stage_is_skipped_and_a_changed_one_is_refused(tmp_path):
    calls = []
    stages = Stages(tmp_path, total=3)
    assert stages.run("train a", tmp_path / "a", {"lr": 1}, lambda: calls.append("a")) is True
    assert stages.run("train a", tmp_path / "a", {"lr": 1}, lambda: calls.append("again")) is False
    assert calls == ["a"]
    records = json.loads((tmp_path / "stages.json").read_text())
    assert [(r["stage"], r["state"]) for r in records] == [("train a", "ran"), ("train a", "skipped")]
    with pytest.raises(ConfigError, match=r"a was made with a different config \(changed: lr\)"):
        stages.run("train a", tmp_path / "a", {"lr": 2}, lambda: calls.append("changed"))
    assert calls == ["a"]


def test_a_stage_that_fails_leaves_no_marker_and_runs_again(tmp_path):
    stages = Stages(tmp_path, total=1)

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stages.run("evaluate base", tmp_path / "base", {"x": 1}, boom)
    assert not (tmp_path / "base" / ".done.json").exists()
    assert stages.run("evaluate base", tmp_path / "base", {"x": 1}, lambda: None) is True
