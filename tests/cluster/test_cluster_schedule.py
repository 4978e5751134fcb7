"""Cluster files that schedule: pod requests below node allocatable, /dev/shm, hub-token secret, shared storage
in the launcher, one GPU type everywhere, every GPU config's model/GPU/storage keys from values.yaml, each job's
GPU request fits the worker group, and the served model is evaluated with the prompt it was trained with."""

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.evaluate import EvaluateConfig
from jobs.pipeline import PipelineConfig
from jobs.synthesize import SynthesizeConfig
from jobs.train_sft import TrainSFTConfig
from lib.config import load_config
from lib.plan import bundles, check_plan, node_shapes, unschedulable
from tests.cluster.test_cluster_files import render_module

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
MODELS = {"evaluate": EvaluateConfig, "synthesize": SynthesizeConfig, "train_sft": TrainSFTConfig, "pipeline": PipelineConfig}


@pytest.fixture(scope="module")
def render():
    return render_module()


@pytest.fixture(scope="module")
def values():
    return yaml.safe_load((CLUSTER / "values.yaml").read_text())


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def entrypoint_config(job_file: str):
    """The RayJob's entrypoint loaded as its job's config (the config file plus the entrypoint's overrides)."""
    argv = shlex.split(manifest(job_file)["spec"]["entrypoint"])
    job = argv[2].split(".")[1]
    return load_config(MODELS[job], REPO / argv[argv.index("--config") + 1], argv[argv.index("--config") + 2:])


def cpu_quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_pods_request_less_than_node_allocatable_with_room_for_ray(render, values):
    """Each group's pod requests (= limits) fit what its instance leaves to pods, Ray is offered fewer CPUs than
    the pod has, the pod lands on its instance type, and /dev/shm is a memory volume smaller than the pod."""
    spec = manifest("raycluster.yaml")["spec"]
    groups = {"head": spec["headGroupSpec"], "gpu_workers": spec["workerGroupSpecs"][0]}
    for name, group in groups.items():
        node = values[name]
        pod = group["template"]["spec"]
        (c,) = pod["containers"]
        requests = c["resources"]["requests"]
        assert requests == c["resources"]["limits"]
        cpus, memory_gi = render.allocatable(render.INSTANCES[node["instance_type"]] | node)
        assert cpu_quantity(requests["cpu"]) <= cpus and render.gi(requests["memory"]) <= memory_gi, name
        assert cpu_quantity(requests["cpu"]) < render.INSTANCES[node["instance_type"]]["node_cpus"]
        assert int(group["rayStartParams"]["num-cpus"]) == cpu_quantity(requests["cpu"]) - node["ray_reserved_cpus"] > 0
        assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": node["instance_type"]}
        shm = {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
        assert shm["medium"] == "Memory" and render.gi(shm["sizeLimit"]) < render.gi(requests["memory"])
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert groups["gpu_workers"]["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == str(values["gpu_workers"]["gpus"])


def test_values_that_cannot_schedule_are_refused(render, values):
    """The issue's shapes: a pod asking for the whole node, or an 80 GB GPU type on a 40 GB instance, is an error."""
    whole = copy.deepcopy(values)
    whole["gpu_workers"].update(cpus=96)
    with pytest.raises(ValueError, match="gpu_workers: requests 96 CPUs / 1050Gi exceed .* stay Pending"):
        render.check_values(whole)
    small_head = copy.deepcopy(values)
    small_head["head"].update(instance_type="m5.2xlarge", node_cpus=8, node_memory_gi=32, cpus=8, memory="32Gi")
    with pytest.raises(ValueError, match="head: requests 8 CPUs / 32Gi exceed"):
        render.check_values(small_head)
    wrong_gpu = copy.deepcopy(values)
    wrong_gpu["gpu_workers"]["instance_type"] = "p4d.24xlarge"
    with pytest.raises(ValueError, match="gpu_workers.gpu_type is 'A100-80GB', but p4d.24xlarge has 'A100-40GB'"):
        render.check_values(wrong_gpu)


def test_every_pod_gets_storage_data_dir_and_secrets_as_references(values):
    """Shared storage claim, MATHRAY_DATA_DIR/MATHRAY_HOME/HF_HOME on it, HF_TOKEN and API keys from Secrets."""
    for name in ["raycluster.yaml", "rayservice.yaml"] + [p.name for p in (CLUSTER / "kuberay").glob("rayjob-*.yaml")]:
        spec = manifest(name)["spec"]
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
        for group in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            env = {e["name"]: e for e in pod["containers"][0]["env"]}
            assert env["MATHRAY_DATA_DIR"]["value"] == values["data_dir"]
            assert env["MATHRAY_HOME"]["value"].startswith(values["storage"] + "/")
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": values["hf_secret"], "key": "HF_TOKEN", "optional": True}
            assert all("value" not in env[k] for k in ("HF_TOKEN", "OPENAI_API_KEY", "MATHRAY_API_KEYS"))
            assert {v["name"]: v for v in pod["volumes"]}["storage"]["persistentVolumeClaim"]["claimName"] == values["storage_claim"]
    storage = manifest("storage.yaml")["items"]
    assert [i["kind"] for i in storage] == ["StorageClass", "PersistentVolumeClaim"]
    assert storage[0]["provisioner"] == "efs.csi.aws.com" and storage[0]["parameters"]["fileSystemId"] == values["efs_file_system_id"]
    assert storage[1]["metadata"]["name"] == values["storage_claim"] and storage[1]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_launcher_mounts_efs_on_every_node_and_binds_it_into_the_container(values):
    """`ray up`: EFS (NFS v4.1) at `storage` on each host, bound into the container; data dir, shm, secrets file."""
    config = yaml.safe_load((CLUSTER / "launcher.yaml").read_text())
    mount = config["initialization_commands"][0]
    assert f"{values['efs_file_system_id']}.efs.{values['cloud']['region']}.amazonaws.com:/ {values['storage']}" in mount
    assert "mount -t nfs4 -o nfsvers=4.1" in mount
    docker = config["docker"]
    assert f"-v {values['storage']}:{values['storage']}" in docker["run_options"]
    assert f"-e MATHRAY_DATA_DIR={values['data_dir']}" in docker["run_options"]
    assert docker["worker_run_options"] == [f"--shm-size={values['gpu_workers']['shm'][:-1]}"]
    assert "--secret-id hf-token" in config["initialization_commands"][2] and "chmod 600" in config["initialization_commands"][2]
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"] == values["gpu_workers"]["instance_type"]
    assert worker["resources"] == {"CPU": values["gpu_workers"]["cpus"] - values["gpu_workers"]["ray_reserved_cpus"],
                                   "GPU": values["gpu_workers"]["gpus"]}


def test_gpu_configs_take_model_gpu_and_storage_keys_from_values(render, values):
    """base_model is what the 7B runs train; one engine/worker per GPU of a worker node; outputs on storage;
    every GPU config names the one GPU type of values.yaml."""
    keys = render.config_keys(values)
    w = values["gpu_workers"]
    for config, rendered in keys.items():
        data = yaml.safe_load((REPO / config).read_text())
        for dotted, value in rendered.items():
            node = data
            for part in dotted.split("."):
                node = node[part]
            assert node == value, f"{config}: {dotted}"
        assert data["output_dir"].startswith(values["storage"] + "/"), config
        if config != "jobs/configs/synthesize_gpt4.yaml":
            assert f"{w['gpus']} x {w['gpu_type']}" in (REPO / config).read_text(), f"{config}: Hardware comment"
    for config in ("train_sft_7b_fsdp", "train_sft_7b_deepspeed", "pipeline_7b"):
        assert yaml.safe_load((REPO / f"jobs/configs/{config}.yaml").read_text())["model"] == values["base_model"]
    gpu_texts = [p.read_text() for p in (REPO / "jobs" / "configs").glob("*.yaml")]
    assert not any(re.search(r"A100-40GB|40 ?GB GPU", t) for t in gpu_texts)


@pytest.mark.parametrize("job", ["evaluate", "train_sft", "synthesize", "pipeline"])
def test_each_rayjob_fits_the_worker_group(values, job):
    """Every stage of a RayJob's dry-run plan packs onto the head + GPU worker group; the same plan with
    one more bundle than the GPU group holds does not."""
    import importlib

    config = entrypoint_config(f"rayjob-{job}.yaml")
    stages = importlib.import_module(f"jobs.{job}").plan(config)
    shapes = node_shapes(values)
    assert check_plan(stages, shapes) == []
    w = values["gpu_workers"]
    gpu_stages = [s for s in stages if s.total("GPU")]
    assert all(s.total("GPU") == w["gpus"] for s in gpu_stages)  # one engine / worker per GPU of a node
    assert bool(gpu_stages) == (job != "synthesize")
    too_many = bundles(w["max"] * w["gpus"] + 1, 1, 1)
    assert unschedulable(too_many, shapes).startswith(f"{w['max'] * w['gpus'] + 1} bundles")


def test_served_model_is_evaluated_with_the_prompt_it_was_trained_with(values):
    """serve.yaml serves the train RayJob's export, and the evaluate RayJob loads that export with the train
    job's prompt; the pipeline trains and evaluates with one prompt (its own validator)."""
    train = entrypoint_config("rayjob-train_sft.yaml")
    evaluate = entrypoint_config("rayjob-evaluate.yaml")
    served = yaml.safe_load((CLUSTER / "serve.yaml").read_text())["applications"][0]["args"]["model"]
    assert served == evaluate.model == f"{train.output_dir}/hf"
    assert evaluate.prompt == train.prompt
    assert train.model == values["base_model"]
    pipeline = entrypoint_config("rayjob-pipeline.yaml")
    assert pipeline.train.prompt == pipeline.evaluate.prompt and pipeline.model == values["base_model"]
