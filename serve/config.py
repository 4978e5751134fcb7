"""The Serve application's arguments (``args:`` of a Serve config YAML, or ``build_app(dict)``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from lib.config import StrictModel
from lib.sampling import EngineConfig


class EngineArgs(EngineConfig):
    """vLLM ``AsyncEngineArgs`` (``extra`` passed through as is); a shorter default context than evaluation."""

    max_model_len: int = 2048


class Limits(StrictModel):
    """Caps that turn abusive or mistaken requests into 4xx errors before they reach the engine."""

    max_n: int = Field(16, ge=1, description="samples per plain request")
    max_best_of_n: int = Field(64, ge=1, description="samples per best-of-N request")
    max_tokens: int = Field(1024, ge=1)
    max_prompt_tokens: int = Field(2048, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)


class Replicas(StrictModel):
    """Autoscaling of one deployment (min = max gives a fixed count)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)

    def deployment_options(self) -> dict[str, Any]:
        return {
            "autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                   "target_ongoing_requests": self.target_ongoing_requests},
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }


class ServeArgs(StrictModel):
    model: str = Field("default", description="'default' (embedded SmolLM2), a checkpoint directory, or a hub id")
    served_name: str = Field("mathray", description="the model name clients pass (GET /v1/models)")
    engine: EngineArgs = Field(default_factory=EngineArgs)
    api_keys_env: str | None = Field("MATHRAY_API_KEYS", description="env var with comma-separated keys")
    api_keys_file: str | None = Field(None, description="file with one key per line")
    allow_no_auth: bool = Field(False, description="serve without keys (only when none are configured)")
    limits: Limits = Field(default_factory=Limits)
    grading_timeout_s: float = Field(5.0, gt=0, description="one answer comparison")
    grader_pool_size: int = Field(4, ge=1, description="grader processes per verifier replica")
    grading_budget_s: float = Field(30.0, gt=0, description="one verifier request in all, waiting for a grader included")
    grader_memory_mb: int | None = Field(1024, ge=64, description="address-space cap of each grader process")
    model_replicas: Replicas = Field(default_factory=Replicas)
    verifier_replicas: Replicas = Field(default_factory=lambda: Replicas(num_cpus=0.25, target_ongoing_requests=8))
    ingress_replicas: Replicas = Field(default_factory=lambda: Replicas(num_cpus=0.25, max_ongoing_requests=256,
                                                                        target_ongoing_requests=64))
    graceful_shutdown_timeout_s: float = Field(30, ge=0)

    def api_keys(self) -> set[str]:
        """The accepted keys, read on the ingress replica (env var and/or file). Raises when none are
        configured and ``allow_no_auth`` is false, so a deployment never ends up open by accident."""
        keys: set[str] = set()
        if self.api_keys_env and os.environ.get(self.api_keys_env):
            keys |= {k.strip() for k in os.environ[self.api_keys_env].split(",") if k.strip()}
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            if not path.is_file():
                raise ValueError(f"api_keys_file: {path} does not exist")
            keys |= {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
        if not keys and not self.allow_no_auth:
            raise ValueError(f"no API keys: set ${self.api_keys_env} (comma-separated) or api_keys_file, "
                             "or allow_no_auth: true for a private network")
        return keys
