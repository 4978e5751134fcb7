"""jobs.pipeline composes jobs through their ``run(cfg)``: each stage gets a config object with the pipeline's
model / data / output_dir filled in, the resolved configs are written to configs/ as records, a stage's
identity leaves out the keys its job config names run-only, and the teacher comes from serve.teacher_endpoint.
The jobs are stubs here (no Ray, no engine): what is checked is the wiring, in well under a second."""

import contextlib
import json

import pytest
import yaml

import jobs.analyze_errors
import jobs.evaluate
import jobs.pipeline
import jobs.synthesize
import jobs.train_sft
from lib.config import ConfigError, load_config

DEMO = "jobs/configs/pipeline_demo.yaml"


@pytest.fixture
def calls(monkeypatch):
    """Every stub run records (job, config); the synthesis stub writes no data, so only real subsets are made."""
    seen = []

    def stub(name):
        def run(cfg):
            seen.append((name, cfg))
            return None
        return run

    for module, name in ((jobs.evaluate, "evaluate"), (jobs.synthesize, "synthesize"), (jobs.train_sft, "train"),
                         (jobs.analyze_errors, "error_analysis")):
        monkeypatch.setattr(module, "run", stub(name))
    monkeypatch.setattr(jobs.pipeline, "init_ray", lambda: None)
    monkeypatch.setattr("lib.pipeline_report.write_report", lambda run_dir: {"html": "r.html", "md": "r.md", "excerpt": "x"})
    return seen


def config(tmp_path, *overrides):
    return load_config(jobs.pipeline.PipelineConfig, DEMO, ["sizes=[4]", "serve_teacher=null", f"output_dir={tmp_path}",
                                                            "synthesize.teacher.base_url=http://127.0.0.1:9/v1", *overrides])


def test_each_stage_runs_its_job_on_a_config_object(tmp_path, calls):
    summary = jobs.pipeline.run(config(tmp_path))
    names = [n for n, _ in calls]
    assert names == ["evaluate", "synthesize", "train", "evaluate", "error_analysis", "error_analysis"]
    base, synth, train, sft_eval, ea_base, ea_sft = (c for _, c in calls)
    assert isinstance(base, jobs.evaluate.EvaluateConfig) and isinstance(train, jobs.train_sft.TrainSFTConfig)
    assert (base.model, base.output_dir) == ("default", str(tmp_path / "base"))
    assert synth.output_dir == str(tmp_path / "synthesize")
    assert (train.model, train.data.source, train.output_dir) == (
        "default", str(tmp_path / "subsets" / "real-4.jsonl"), str(tmp_path / "sft" / "real-4"))
    assert (sft_eval.model, sft_eval.output_dir) == (str(tmp_path / "sft" / "real-4" / "hf"), str(tmp_path / "eval" / "real-4"))
    assert (ea_base.eval_dir, ea_sft.eval_dir) == (str(tmp_path / "base"), str(tmp_path / "eval" / "real-4"))
    # the configs as run are records on disk: what `python -m jobs.X --config FILE` would run
    assert yaml.safe_load((tmp_path / "configs" / "train-real-4.yaml").read_text()) == train.model_dump(mode="json")
    assert yaml.safe_load((tmp_path / "configs" / "evaluate-base.yaml").read_text()) == base.model_dump(mode="json")
    # summary.json: the stages as run, the subsets made (the stub synthesis left no synthetic rows)
    assert [s["state"] for s in summary.stages] == ["ran"] * 6 and summary.subsets["sources"]["synthetic"]["sizes"] == []
    assert json.loads((tmp_path / "summary.json").read_text())["report"] == {"html": "r.html", "md": "r.md"}


def test_run_only_keys_do_not_redo_a_stage_and_a_meaningful_key_is_refused(tmp_path, calls):
    """A rerun with other resources / logging skips every stage; another temperature is named, not mixed in."""
    jobs.pipeline.run(config(tmp_path))
    calls.clear()
    summary = jobs.pipeline.run(config(tmp_path, "evaluate.resources.num_graders=2", "evaluate.stage=metrics",
                                       "train.log_every=5", "synthesize.resources.num_clients=2"))
    assert calls == [] and [s["state"] for s in summary.stages] == ["skipped"] * 6
    record = json.loads((tmp_path / "base" / ".done.json").read_text())["record"]
    assert "resources" not in record and record["temperature"] == 0.7
    with pytest.raises(ConfigError, match=r"base was made with a different config \(changed: temperature\)"):
        jobs.pipeline.run(config(tmp_path, "evaluate.temperature=1.0"))


def test_the_serve_teacher_comes_from_the_endpoint_function(tmp_path, calls, monkeypatch):
    """serve_teacher: the synthesis config gets the endpoint's base_url and model, and its key through an env var."""
    from serve import teacher_endpoint

    @contextlib.contextmanager
    def endpoint(serve_config, key_file, port=None):
        assert str(serve_config).endswith("serve/configs/serve_default_cpu.yaml") and key_file == tmp_path / ".teacher_api_key"
        yield teacher_endpoint.Endpoint(base_url="http://127.0.0.1:1234/v1", api_key="fresh-key", model="mathray")

    monkeypatch.setattr(teacher_endpoint, "local_endpoint", endpoint)
    monkeypatch.setenv(jobs.pipeline.TEACHER_KEY_ENV, "old")  # restored after the test
    cfg = load_config(jobs.pipeline.PipelineConfig, DEMO, ["sizes=[4]", f"output_dir={tmp_path}"])
    jobs.pipeline.run(cfg)
    (synth,) = [c for n, c in calls if n == "synthesize"]
    assert (synth.teacher.base_url, synth.teacher.model, synth.teacher.api_key_env) == (
        "http://127.0.0.1:1234/v1", "mathray", jobs.pipeline.TEACHER_KEY_ENV)
    assert jobs.pipeline.os.environ[jobs.pipeline.TEACHER_KEY_ENV] == "fresh-key"
    assert "fresh-key" not in (tmp_path / "configs" / "synthesize.yaml").read_text()
