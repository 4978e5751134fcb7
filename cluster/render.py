"""Render every cluster file from ``cluster/values.yaml``: the Ray cluster launcher YAML (CPU head,
autoscaling GPU workers, EFS on every node), a KubeRay RayCluster, one RayJob per job, the RayService for the
endpoint and the shared storage claim; and the model-, GPU- and cluster-dependent keys of the GPU job configs
(:func:`config_keys`), rewritten in place line by line so their comments and other keys stay as written.

Run: python cluster/render.py            (writes the files and keys)
     python cluster/render.py --check    (exit 1 if a committed file or key differs from its rendering)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CLUSTER = Path(__file__).resolve().parent
REPO = CLUSTER.parent
sys.path.insert(0, str(REPO))  # `python cluster/render.py` from the checkout: lib/ importable

from lib.config import _key_lines  # noqa: E402

HEADER = "# Rendered by `python cluster/render.py` from cluster/values.yaml: edit the values, not this file.\n"

# Published shapes of the instance types the values may name: a value that disagrees is an error.
INSTANCES = {
    "m5.2xlarge": {"node_cpus": 8, "node_memory_gi": 32},
    "m5.4xlarge": {"node_cpus": 16, "node_memory_gi": 64},
    "m5.8xlarge": {"node_cpus": 32, "node_memory_gi": 128},
    "p4d.24xlarge": {"node_cpus": 96, "node_memory_gi": 1152, "gpus": 8, "gpu_type": "A100-40GB", "gpu_memory_gb": 40},
    "p4de.24xlarge": {"node_cpus": 96, "node_memory_gi": 1152, "gpus": 8, "gpu_type": "A100-80GB", "gpu_memory_gb": 80},
    "p5.48xlarge": {"node_cpus": 192, "node_memory_gi": 2048, "gpus": 8, "gpu_type": "H100-80GB", "gpu_memory_gb": 80},
}

# (job name, its GPU-cluster config, entrypoint arguments after the config): every job ships one.
JOBS = {
    "synthesize": ("jobs/configs/synthesize_gpt4.yaml", []),
    "train_sft": ("jobs/configs/train_sft_7b_fsdp.yaml", []),
    "evaluate": ("jobs/configs/evaluate_7b_gpu.yaml", ["model={serve_model}", "prompt={serve_prompt}",
                                                        "output_dir={storage}/evaluate/xwin-7b"]),
    "pipeline": ("jobs/configs/pipeline_7b.yaml", []),
}


def gi(quantity: str) -> float:
    """``"1050Gi"`` -> 1050.0 (the values write memory in Gi)."""
    if not re.fullmatch(r"\d+(\.\d+)?Gi", quantity):
        raise ValueError(f"memory {quantity!r}: write it in Gi, e.g. 64Gi")
    return float(quantity[:-2])


def allocatable(node: dict[str, Any]) -> tuple[float, float]:
    """A conservative (CPUs, GiB) a node leaves to pods: the kubelet, system daemons and DaemonSets keep
    max(1, 2%) of the CPUs and 5% + 1 GiB of the memory (EKS reserves less on these sizes)."""
    return node["node_cpus"] - max(1.0, 0.02 * node["node_cpus"]), 0.95 * node["node_memory_gi"] - 1


def check_values(v: dict[str, Any]) -> dict[str, Any]:
    """Node groups agree with their instance type and request less than the node leaves to pods."""
    for name in ("head", "gpu_workers"):
        node = v[name]
        shape = INSTANCES.get(node["instance_type"])
        if shape is None:
            raise ValueError(f"{name}.instance_type {node['instance_type']!r}: add its shape to INSTANCES in render.py")
        for key, published in shape.items():
            if node.get(key, published) != published:
                raise ValueError(f"{name}.{key} is {node[key]!r}, but {node['instance_type']} has {published!r}")
        cpus, memory = allocatable(node)
        if node["cpus"] > cpus or gi(node["memory"]) > memory:
            raise ValueError(f"{name}: requests {node['cpus']} CPUs / {node['memory']} exceed what a {node['instance_type']} "
                             f"leaves to pods (about {cpus:g} CPUs / {memory:g}Gi): the pod would stay Pending")
        if gi(node["shm"]) >= gi(node["memory"]) or node["ray_reserved_cpus"] >= node["cpus"]:
            raise ValueError(f"{name}: shm must be below memory and ray_reserved_cpus below cpus")
    return v


def config_keys(v: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config file -> {dotted key: value}: every key of the GPU job configs that depends on the model, the GPUs
    or the cluster. One vLLM engine per GPU of a worker node, one Ray Train worker per GPU of a node."""
    s, w = v["storage"], v["gpu_workers"]
    engines = {"resources.num_engines": w["gpus"], "resources.gpus_per_engine": 1, "engine.tensor_parallel_size": 1}
    train = {"model": v["base_model"], "data.source": f"{s}/synthesize/gpt4", "resources.num_workers": w["gpus"],
             "resources.use_gpu": True}
    return {
        "jobs/configs/synthesize_gpt4.yaml": {"output_dir": f"{s}/synthesize/gpt4"},
        "jobs/configs/train_sft_7b_fsdp.yaml": {**train, "output_dir": f"{s}/checkpoints/xwin-7b"},
        "jobs/configs/train_sft_7b_deepspeed.yaml": {**train, "output_dir": f"{s}/checkpoints/xwin-7b-zero3"},
        "jobs/configs/evaluate_7b_gpu.yaml": {**engines, "output_dir": f"{s}/evaluate/xwin-math-7b"},
        "jobs/configs/pipeline_7b.yaml": {"model": v["base_model"], "output_dir": f"{s}/pipeline/llama2-7b",
                                          **{f"evaluate.{k}": x for k, x in engines.items()},
                                          "train.resources.num_workers": w["gpus"], "train.resources.use_gpu": True},
    }


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def render_keys(text: str, keys: dict[str, Any], where: str) -> str:
    """``text`` with each dotted key's value replaced on its own line (comments and the rest kept)."""
    lines, at = text.splitlines(keepends=True), _key_lines(text)
    for dotted, value in keys.items():
        number = at.get(tuple(dotted.split(".")))
        if number is None:
            raise ValueError(f"{where}: key {dotted!r} is missing; it is rendered from cluster/values.yaml")
        line = lines[number - 1]
        match = re.match(r"^(\s*[\w.-]+:[ \t]*)([^#\n]*?)([ \t]*(#.*)?\n?)$", line)
        if match is None or not match.group(2):
            raise ValueError(f"{where}:{number}: key {dotted!r} must hold a one-line value")
        lines[number - 1] = match.group(1) + _scalar(value) + match.group(3)
    return "".join(lines)


def train_config(v: dict[str, Any]) -> dict[str, Any]:
    """The train config whose export the endpoint serves, as YAML (its prompt is the served prompt)."""
    return yaml.safe_load((REPO / v["train_config"]).read_text())


def load_values(path: Path = CLUSTER / "values.yaml") -> dict[str, Any]:
    """The values plus what follows from them: serve_model (the train config's export) and serve_prompt."""
    v = check_values(yaml.safe_load(path.read_text()))
    train = {**train_config(v), **config_keys(v)[v["train_config"]]}
    return {**v, "serve_model": f"{train['output_dir']}/hf", "serve_prompt": train.get("prompt", "boxed")}


def entrypoint(job: str, v: dict[str, Any]) -> str:
    config, args = JOBS[job]
    return " ".join(["python", "-m", f"jobs.{job}", "--config", config] + [a.format(**v) for a in args])


def serve_config(v: dict[str, Any]) -> dict[str, Any]:
    """What `serve deploy` takes (also the RayService's serveConfigV2)."""
    r = v["serve_replicas"]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{
            "name": "mathray", "route_prefix": "/", "import_path": "serve.app:build_app",
            "args": {
                "model": v["serve_model"], "served_name": "mathray", "api_keys_env": "MATHRAY_API_KEYS",
                "engine": {"dtype": "bfloat16", "max_model_len": 4096, "gpu_memory_utilization": 0.9},
                "model_replicas": {"min_replicas": r["min"], "max_replicas": r["max"],
                                   "target_ongoing_requests": r["target_ongoing_requests"], "max_ongoing_requests": 128,
                                   "num_gpus": 1, "num_cpus": 4},
                "verifier_replicas": {"min_replicas": 1, "max_replicas": 4, "num_cpus": 1},
                "ingress_replicas": {"min_replicas": 1, "max_replicas": 4, "num_cpus": 1},
            },
        }],
    }


def env_vars(v: dict[str, Any]) -> dict[str, str]:
    """Plain environment of every Ray node: caches and data on the shared storage."""
    return {"HF_HOME": f"{v['storage']}/hf", "MATHRAY_HOME": f"{v['storage']}/mathray", "MATHRAY_DATA_DIR": v["data_dir"]}


SECRETS = (("openai_secret", "OPENAI_API_KEY"), ("api_keys_secret", "MATHRAY_API_KEYS"), ("hf_secret", "HF_TOKEN"))


def container(v: dict[str, Any], node: dict[str, Any], gpus: int = 0) -> dict[str, Any]:
    """The Ray container: requests = limits (guaranteed QoS) below the node's allocatable, storage and /dev/shm."""
    resources = {"cpu": str(node["cpus"]), "memory": node["memory"]}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    env = [{"name": k, "value": x} for k, x in env_vars(v).items()]
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": v[secret], "key": key, "optional": True}}}
            for secret, key in SECRETS]
    return {"name": "ray", "image": v["image"], "workingDir": v["app_dir"], "env": env,
            "resources": {"limits": resources, "requests": dict(resources)},
            "volumeMounts": [{"name": "storage", "mountPath": v["storage"]}, {"name": "dshm", "mountPath": "/dev/shm"}]}


def pod_spec(v: dict[str, Any], node: dict[str, Any], gpus: int = 0) -> dict[str, Any]:
    spec = {"containers": [container(v, node, gpus)],
            "nodeSelector": {"node.kubernetes.io/instance-type": node["instance_type"]},
            "volumes": [{"name": "storage", "persistentVolumeClaim": {"claimName": v["storage_claim"]}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": node["shm"]}}]}
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def ray_cpus(node: dict[str, Any]) -> int:
    """The CPUs Ray offers to tasks on a node: the pod's, less those kept for Ray's own processes."""
    return node["cpus"] - node["ray_reserved_cpus"]


def ray_cluster_spec(v: dict[str, Any]) -> dict[str, Any]:
    w, head = v["gpu_workers"], v["head"]
    return {
        "rayVersion": "2.60.0",
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": str(ray_cpus(head)), "num-gpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": pod_spec(v, head)},
        },
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": w["min"], "minReplicas": w["min"], "maxReplicas": w["max"],
            "rayStartParams": {"num-cpus": str(ray_cpus(w)), "num-gpus": str(w["gpus"])},
            "template": {"spec": pod_spec(v, w, gpus=w["gpus"])},
        }],
    }


def raycluster(v: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": "mathray", "namespace": v["namespace"]}, "spec": ray_cluster_spec(v)}


def rayjob(job: str, v: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": f"mathray-{job.replace('_', '-')}", "namespace": v["namespace"]},
            "spec": {"entrypoint": entrypoint(job, v), "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 3600,
                     "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}),
                     "rayClusterSpec": ray_cluster_spec(v)}}


def rayservice(v: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "mathray-endpoint", "namespace": v["namespace"]},
            "spec": {"serveConfigV2": yaml.safe_dump(serve_config(v), sort_keys=False),
                     "rayClusterConfig": ray_cluster_spec(v)}}


def storage(v: dict[str, Any]) -> dict[str, Any]:
    """The ReadWriteMany claim every Ray pod mounts: EFS through the EFS CSI driver (dynamic access points)."""
    return {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "mathray-efs"},
         "provisioner": "efs.csi.aws.com",
         "parameters": {"provisioningMode": "efs-ap", "fileSystemId": v["efs_file_system_id"], "directoryPerms": "775"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": v["storage_claim"], "namespace": v["namespace"]},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "mathray-efs",
                  "resources": {"requests": {"storage": v["storage_size"]}}}},
    ]}


def launcher(v: dict[str, Any]) -> dict[str, Any]:
    """Ray's cluster launcher (`ray up cluster/launcher.yaml`): CPU head, autoscaling GPU workers, EFS mounted on
    every node (host) and bound into the container, secrets from AWS Secrets Manager into a 0600 env file."""
    w, head, region = v["gpu_workers"], v["head"], v["cloud"]["region"]
    efs = f"{v['efs_file_system_id']}.efs.{region}.amazonaws.com:/"
    env_file = "/home/ubuntu/.mathray.env"
    secrets = " && ".join(f"echo {key}=$(aws secretsmanager get-secret-value --region {region} --secret-id {v[secret]} "
                          f"--query SecretString --output text 2>/dev/null) >> {env_file}" for secret, key in SECRETS)
    run_options = ["--ulimit nofile=65536:65536", f"-v {v['storage']}:{v['storage']}", f"--env-file {env_file}"]
    run_options += [f"-e {k}={x}" for k, x in env_vars(v).items()]

    def node_type(node: dict[str, Any], gpus: int, min_workers: int, max_workers: int) -> dict[str, Any]:
        return {"node_config": {"InstanceType": node["instance_type"]}, "resources": {"CPU": ray_cpus(node), "GPU": gpus},
                "min_workers": min_workers, "max_workers": max_workers}

    return {
        "cluster_name": "mathray",
        "max_workers": w["max"],
        "idle_timeout_minutes": 10,
        "provider": {"type": v["cloud"]["provider"], "region": region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {"image": v["image"], "container_name": "ray_container", "pull_before_run": True,
                   "run_options": run_options, "head_run_options": [f"--shm-size={head['shm'].removesuffix('i')}"],
                   "worker_run_options": [f"--shm-size={w['shm'].removesuffix('i')}"]},
        "available_node_types": {"head": node_type(head, 0, 0, 0), "gpu_worker": node_type(w, w["gpus"], w["min"], w["max"])},
        "head_node_type": "head",
        "initialization_commands": [
            f"sudo mkdir -p {v['storage']} && (mountpoint -q {v['storage']} || sudo mount -t nfs4 -o "
            f"nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport {efs} {v['storage']})",
            f"sudo chmod 777 {v['storage']}",
            f"rm -f {env_file} && touch {env_file} && chmod 600 {env_file} && {secrets}",
        ],
        "setup_commands": [],
        "head_start_ray_commands": ["ray stop", "ray start --head --port=6379 --dashboard-host=0.0.0.0 "
                                                "--autoscaling-config=~/ray_bootstrap_config.yaml"],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"],
    }


def rendered(v: dict[str, Any] | None = None) -> dict[str, str]:
    """Path relative to the repository -> text, for every cluster file and every GPU job config."""
    v = v or load_values()

    def dump(obj: dict[str, Any]) -> str:
        return HEADER + yaml.safe_dump(obj, sort_keys=False, width=120)

    files = {"cluster/launcher.yaml": dump(launcher(v)), "cluster/serve.yaml": dump(serve_config(v)),
             "cluster/kuberay/raycluster.yaml": dump(raycluster(v)), "cluster/kuberay/rayservice.yaml": dump(rayservice(v)),
             "cluster/kuberay/storage.yaml": dump(storage(v))}
    for job in JOBS:
        files[f"cluster/kuberay/rayjob-{job}.yaml"] = dump(rayjob(job, v))
    for config, keys in config_keys(v).items():
        files[config] = render_keys((REPO / config).read_text(), keys, config)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for rel, text in rendered().items():
        path = REPO / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale (run python cluster/render.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
