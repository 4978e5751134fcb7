"""Render every cluster file from ``cluster/values.yaml``: the Ray cluster launcher YAML (CPU head,
autoscaling GPU workers), a KubeRay RayCluster, one RayJob per job and the RayService for the endpoint.

Run: python cluster/render.py            (writes the files)
     python cluster/render.py --check    (exit 1 if a committed file differs from its rendering)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

CLUSTER = Path(__file__).resolve().parent
HEADER = "# Rendered by `python cluster/render.py` from cluster/values.yaml: edit the values, not this file.\n"

# (job name, entrypoint arguments after the config): every job ships a GPU-cluster config.
JOBS = {
    "synthesize": ("jobs/configs/synthesize_gpt4.yaml", ["output_dir={storage}/synthesize/gpt4"]),
    "train_sft": ("jobs/configs/train_sft_7b_fsdp.yaml", ["data.source={storage}/synthesize/gpt4",
                                                          "output_dir={storage}/checkpoints/xwin-7b"]),
    "evaluate": ("jobs/configs/evaluate_7b_gpu.yaml", ["model={serve_model}", "output_dir={storage}/evaluate/7b"]),
    "pipeline": ("jobs/configs/pipeline_7b.yaml", ["output_dir={storage}/pipeline/llama2-7b"]),
}


def load_values(path: Path = CLUSTER / "values.yaml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


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


def container(v: dict[str, Any], resources: dict[str, Any], gpus: int = 0) -> dict[str, Any]:
    limits = {"cpu": str(resources["cpus"]), "memory": resources["memory"]}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    env = [{"name": "HF_HOME", "value": f"{v['storage']}/hf"},
           {"name": "MATHRAY_HOME", "value": f"{v['storage']}/mathray"},
           {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": v["openai_secret"], "key": "OPENAI_API_KEY", "optional": True}}},
           {"name": "MATHRAY_API_KEYS", "valueFrom": {"secretKeyRef": {"name": v["api_keys_secret"], "key": "MATHRAY_API_KEYS", "optional": True}}}]
    return {"name": "ray", "image": v["image"], "workingDir": v["app_dir"], "env": env,
            "resources": {"limits": limits, "requests": limits},
            "volumeMounts": [{"name": "storage", "mountPath": v["storage"]}]}


def ray_cluster_spec(v: dict[str, Any]) -> dict[str, Any]:
    w = v["gpu_workers"]
    volumes = [{"name": "storage", "persistentVolumeClaim": {"claimName": v["storage_claim"]}}]
    return {
        "rayVersion": "2.60.0",
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": {"containers": [container(v, v["head"])], "volumes": volumes}},
        },
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": w["min"], "minReplicas": w["min"], "maxReplicas": w["max"],
            "rayStartParams": {},
            "template": {"spec": {"containers": [container(v, w, gpus=w["gpus"])], "volumes": volumes,
                                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
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


def launcher(v: dict[str, Any]) -> dict[str, Any]:
    """Ray's cluster launcher (`ray up cluster/launcher.yaml`): CPU head, autoscaling GPU workers."""
    w, head = v["gpu_workers"], v["head"]
    return {
        "cluster_name": "mathray",
        "max_workers": w["max"],
        "idle_timeout_minutes": 10,
        "provider": {"type": v["cloud"]["provider"], "region": v["cloud"]["region"], "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {"image": v["image"], "container_name": "ray_container", "pull_before_run": True,
                   "run_options": ["--ulimit nofile=65536:65536", f"-v {v['storage']}:{v['storage']}"]},
        "available_node_types": {
            "head": {"node_config": {"InstanceType": head["instance_type"]}, "resources": {"CPU": head["cpus"], "GPU": 0},
                     "min_workers": 0, "max_workers": 0},
            "gpu_worker": {"node_config": {"InstanceType": w["instance_type"]},
                           "resources": {"CPU": w["cpus"], "GPU": w["gpus"]},
                           "min_workers": w["min"], "max_workers": w["max"]},
        },
        "head_node_type": "head",
        "setup_commands": [f"mkdir -p {v['storage']}"],
        "head_start_ray_commands": ["ray stop", "ray start --head --port=6379 --dashboard-host=0.0.0.0 "
                                                "--autoscaling-config=~/ray_bootstrap_config.yaml"],
        "worker_start_ray_commands": ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"],
    }


def rendered(v: dict[str, Any] | None = None) -> dict[str, str]:
    """Relative path -> file text, for every cluster file."""
    v = v or load_values()

    def dump(obj: dict[str, Any]) -> str:
        return HEADER + yaml.safe_dump(obj, sort_keys=False, width=120)

    files = {"launcher.yaml": dump(launcher(v)), "serve.yaml": dump(serve_config(v)),
             "kuberay/raycluster.yaml": dump(raycluster(v)), "kuberay/rayservice.yaml": dump(rayservice(v))}
    for job in JOBS:
        files[f"kuberay/rayjob-{job}.yaml"] = dump(rayjob(job, v))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for rel, text in rendered().items():
        path = CLUSTER / rel
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
