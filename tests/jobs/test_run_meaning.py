"""Each job config names the keys that do not change what a run produces (``run_only_keys``: the pipeline's
stage identity) and the keys a resume must not mix (``resume_keys``: the evaluation's resume guard); one
helper each in lib.config reads them."""

import typing

import pytest
import yaml
from pydantic import BaseModel

from jobs.analyze_errors import ErrorAnalysisConfig
from jobs.evaluate import EvaluateConfig, check_resume
from jobs.pipeline import PipelineConfig
from jobs.synthesize import SynthesizeConfig
from jobs.train_sft import TrainSFTConfig
from lib.config import ConfigError, resume_conflicts, run_identity, updated

JOB_CONFIGS = [EvaluateConfig, SynthesizeConfig, TrainSFTConfig, ErrorAnalysisConfig, PipelineConfig]


def field_exists(model: type[BaseModel], dotted: str) -> bool:
    """``dotted`` names a field, through nested models (``judge.api_key_env`` in ``judge: TeacherSettings | None``)."""
    head, _, rest = dotted.partition(".")
    if head not in model.model_fields:
        return False
    if not rest:
        return True
    annotation = model.model_fields[head].annotation
    models = [a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
    return any(field_exists(m, rest) for m in models)


@pytest.mark.parametrize("model", JOB_CONFIGS, ids=lambda m: m.__name__)
def test_declared_keys_are_fields(model):
    """A misspelt key in run_only_keys / resume_keys would silently count toward (or out of) a run's identity."""
    assert all(field_exists(model, k) for k in model.run_only_keys), sorted(model.run_only_keys)
    assert all(field_exists(model, k) for k in model.resume_keys), model.resume_keys


def test_what_each_job_declares():
    """The declarations themselves: evaluate resumes only with the same sampling settings; resources, logging and
    output_dir are run-only; synthesis's stage settings change what it produces."""
    assert EvaluateConfig.resume_keys == ("model", "prompt", "temperature", "top_p", "max_tokens")
    assert EvaluateConfig.run_only_keys == {"output_dir", "resources", "engine", "engine_log_level", "ray_data_progress", "stage"}
    assert TrainSFTConfig.run_only_keys == {"output_dir", "resources", "log_every", "keep_checkpoints", "checkpoint_every"}
    assert SynthesizeConfig.run_only_keys == {"output_dir", "resources"}
    assert ErrorAnalysisConfig.run_only_keys == {"eval_dir", "output_dir", "judge.api_key_env"}
    assert PipelineConfig.run_only_keys == frozenset() and SynthesizeConfig.resume_keys == ()


def test_run_identity_ignores_run_only_keys_and_sees_the_rest():
    base = EvaluateConfig()
    same = updated(base, {"resources.num_engines": 4, "engine.max_num_seqs": 8, "stage": "metrics", "output_dir": "/x"})
    assert run_identity(same) == run_identity(base)
    assert run_identity(updated(base, {"temperature": 1.0}))["temperature"] == 1.0
    assert run_identity(updated(base, {"limit": 7})) != run_identity(base)
    assert "resources" not in run_identity(base) and "output_dir" not in run_identity(base)

    synth = SynthesizeConfig()
    assert run_identity(updated(synth, {"stage.questions_per_seed": 3})) != run_identity(synth)
    assert run_identity(updated(synth, {"resources.num_clients": 3})) == run_identity(synth)


def test_run_identity_drops_a_nested_key_only():
    """judge.api_key_env (the name of the key's variable) is run-only; the judge's model is not."""
    cfg = updated(ErrorAnalysisConfig(), {"judge": {"model": "gpt-4o", "api_key_env": "MY_KEY"}, "eval_dir": "/e"})
    identity = run_identity(cfg)
    assert identity["judge"]["model"] == "gpt-4o" and "api_key_env" not in identity["judge"]
    assert "eval_dir" not in identity and identity["judge_max_samples"] == 64
    assert run_identity(ErrorAnalysisConfig())["judge"] is None  # no judge: nothing to drop below it


def test_resume_conflicts_compare_only_resume_keys(tmp_path):
    """Only the sampling settings recorded in config.yaml are compared; a new limit or n is a resume."""
    assert resume_conflicts(EvaluateConfig(), tmp_path) == {}  # nothing recorded yet
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "default", "temperature": 0.7, "top_p": 1.0,
                                                          "limit": 2, "samples_per_question": 4}))
    cfg = updated(EvaluateConfig(), {"temperature": 1.0, "limit": 9, "samples_per_question": 64})
    assert resume_conflicts(cfg, tmp_path) == {"temperature": (0.7, 1.0)}
    with pytest.raises(ConfigError, match=r"holds samples drawn with other settings \(temperature: 0.7 -> 1.0\); use a new output_dir"):
        check_resume(cfg, tmp_path)
    check_resume(updated(cfg, {"temperature": 0.7}), tmp_path)  # same sampling settings: resumes
