"""Shared fixtures: one session-scoped local Ray (2 CPUs), the default model, a tiny random model; the
longest modules first (for ``make test``'s two pytest-xdist workers)."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep when idle instead of spinning: under `make test`'s two workers two vLLM engines (or an
# engine and a training run) share the 2 cores, and spinning threads take the cores the other side computes on.
# Two concurrent vLLM CPU engines on 2 cores (tiny bench, tok/s each): 20 spinning, 72 passive; one alone: 114
# (ACTIVE) against 107. Set here, before torch loads libgomp (it reads the variable once), so every Ray worker,
# server and job the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Seconds per test (setup + call + teardown) from a full serial run on a 2-core machine, tests of 2 s or more:
# only the order below reads it, so a stale or missing entry costs balance, never a result. Regenerate with
# `python -m tests.durations LOG` from a `pytest --durations=0` log.
DURATIONS = Path(__file__).with_name("durations.json")
UNKNOWN_SLOW_S = 60.0  # a slow test not yet measured: it starts an engine or a Ray job


def expected_seconds(item, durations: dict[str, float]) -> float:
    if "gpu" in item.keywords and not has_cuda():
        return 0.0  # skipped
    return durations.get(item.nodeid, UNKNOWN_SLOW_S if "slow" in item.keywords else 0.0)


def module_of(item) -> str:
    return item.nodeid.split("::", 1)[0]


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    """Longest module first, its tests kept in file order (a module fixture is built once). Under pytest-xdist
    (`make test`: ``-n 2 --dist loadscope``, one module per unit of work) each worker takes the next module when
    it finishes one, so the long ones start at once and the short ones fill the end (longest-processing-time-
    first). Skip tests marked gpu when CUDA is not available."""
    durations = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    blocks: dict[str, list] = {}
    for item in items:
        blocks.setdefault(module_of(item), []).append(item)
    ordered = sorted(blocks.values(), key=lambda block: -sum(expected_seconds(i, durations) for i in block))
    items[:] = [item for block in ordered for item in block]
    if not has_cuda():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def default_model():
    from lib.models import prepare_default_model

    return str(prepare_default_model())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model):
    from lib.models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, default_model):
    """The tiny Llama with a base model's tokenizer: adds a BOS, has no chat template."""
    from lib.models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama-base", base=True))
