"""Every cluster file is rendered from cluster/values.yaml, validates against its schema, and names only
entrypoints, configs and import paths that exist (and configs that load)."""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.evaluate import EvaluateConfig
from jobs.synthesize import SynthesizeConfig
from jobs.train_sft import TrainSFTConfig
from lib.config import load_config
from serve.config import ServeArgs

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
JOB_MODELS = {"evaluate": EvaluateConfig, "synthesize": SynthesizeConfig, "train_sft": TrainSFTConfig}


def render_module():
    spec = importlib.util.spec_from_file_location("cluster_render", CLUSTER / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_the_rendering_of_values():
    """Every cluster file and every rendered key of the GPU job configs is what values.yaml gives."""
    render = render_module()
    files = render.rendered()
    cluster_files = {str(p.relative_to(REPO)) for p in CLUSTER.rglob("*.yaml")} - {"cluster/values.yaml", "cluster/runtime_env.yaml"}
    assert {f for f in files if f.startswith("cluster/")} == cluster_files
    assert sorted(f for f in files if f.startswith("jobs/")) == sorted(f"jobs/configs/{n}.yaml" for n in (
        "evaluate_7b_gpu", "pipeline_7b", "synthesize_gpt4", "train_sft_7b_deepspeed", "train_sft_7b_fsdp"))
    for rel, text in files.items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: run python cluster/render.py"


def test_launcher_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "launcher.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does: fill Ray's defaults, then check the schema
    assert config["available_node_types"]["head"]["resources"]["GPU"] == 0
    assert config["available_node_types"]["gpu_worker"]["max_workers"] == config["max_workers"]


def check_job_entrypoint(command: str) -> str:
    """`python -m jobs.X --config FILE k=v ...`: the module exists and the config loads with the overrides."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs."), command
    job = argv[2].split(".", 1)[1]
    assert (REPO / "jobs" / f"{job}.py").is_file(), f"no module for {argv[2]}"
    config, overrides = argv[argv.index("--config") + 1], argv[argv.index("--config") + 2:]
    assert (REPO / config).is_file(), f"{config} does not exist"
    if job in JOB_MODELS:
        load_config(JOB_MODELS[job], REPO / config, overrides)
    return job


def check_serve_config(config: dict):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    for app in schema.applications:
        module, attr = app.import_path.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        ServeArgs.model_validate(app.args)


def test_kuberay_manifests_name_existing_entrypoints_and_valid_serve_config():
    values = yaml.safe_load((CLUSTER / "values.yaml").read_text())
    jobs = []
    for path in sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml")) + [CLUSTER / "kuberay" / f"ray{k}.yaml" for k in ("cluster", "service")]:
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"] and doc["metadata"]["namespace"] == values["namespace"]
        spec = doc["spec"]
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
        for group in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
            (c,) = group["template"]["spec"]["containers"]
            assert c["image"] == values["image"] and c["volumeMounts"][0]["mountPath"] == values["storage"]
        if doc["kind"] == "RayJob":
            jobs.append(check_job_entrypoint(spec["entrypoint"]))
        if doc["kind"] == "RayService":
            check_serve_config(yaml.safe_load(spec["serveConfigV2"]))
    assert sorted(jobs) == ["evaluate", "pipeline", "synthesize", "train_sft"]


def test_serve_configs_validate():
    check_serve_config(yaml.safe_load((CLUSTER / "serve.yaml").read_text()))
    check_serve_config(yaml.safe_load((REPO / "serve" / "configs" / "serve_default_cpu.yaml").read_text()))


def test_runtime_env_has_only_known_fields():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"env_vars", "excludes", "pip", "working_dir", "py_modules"}


def test_readme_commands_name_existing_jobs_and_configs():
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    commands = re.findall(r"(python -m jobs\.\w+ --config [^\s`]+(?: [\w.]+=[^\s`]+)*)", text)
    assert len(commands) >= 5
    for command in commands:
        check_job_entrypoint(command.replace("[key=value", "").strip())
    for path in re.findall(r"serve (?:run|deploy) (\S+\.yaml)", text):
        assert (REPO / path).is_file(), path
