"""Every shipped job config validates against its job's config model, and starts with the required comment."""

from pathlib import Path

import pytest

from jobs.evaluate import EvaluateConfig
from jobs.pipeline import PipelineConfig
from jobs.score import ScoreConfig
from jobs.synthesize import SynthesizeConfig
from jobs.train_sft import TrainSFTConfig
from lib.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
MODELS = {"evaluate": EvaluateConfig, "synthesize": SynthesizeConfig, "train_sft": TrainSFTConfig, "pipeline": PipelineConfig,
          "score": ScoreConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    """Each YAML parses into its job's model (no unknown keys) and documents hardware and command."""
    job = next(name for name in MODELS if path.name.startswith(name))
    load_config(MODELS[job], path)
    text = path.read_text()
    assert text.startswith("#"), "configs start with a comment saying what they are for"
    assert f"jobs.{job}" in text, "the comment shows the command that runs the config"


def test_unknown_dataset_is_rejected_before_work():
    """A dataset name typo fails at config load with the list of known datasets."""
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'"):
        load_config(EvaluateConfig, None, ["datasets=[gsm9k]"])


def test_evaluate_selection_is_validated_at_config_load_naming_the_key():
    """issue 15: selection defaults to majority + arithmetic_checked; an unknown or repeated rule is a config
    error naming the key `selection` (before any sampling). Score rules load (their scores/ source is checked
    before work by lib.scoring.check_score_source, tests/lib/test_scoring.py)."""
    from jobs.evaluate import EvaluateConfig
    from lib.config import ConfigError, load_config

    assert EvaluateConfig().selection == ["majority", "arithmetic_checked"]
    assert load_config(EvaluateConfig, None, ["selection=[random]"]).selection == ["random"]
    assert load_config(EvaluateConfig, None, ["selection=[judge_top_groups]"]).selection == ["judge_top_groups"]
    for bad in ("selection=[nope]", "selection=[majority,majority]"):
        with pytest.raises(ConfigError, match="selection"):
            load_config(EvaluateConfig, None, [bad])
