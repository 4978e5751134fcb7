"""AsyncVLLMSampler against VLLMSampler on a real vLLM engine (the tiny random Llama, CPU build), both as Ray
Data stages: the same rows for the same request rows, with several batches in flight."""

import pytest

from lib.sampling import SAMPLE_COLUMNS, AsyncVLLMSampler, SamplingSettings, VLLMSampler

pytestmark = pytest.mark.slow

ENGINE = {"max_model_len": 512, "gpu_memory_utilization": 0.1, "enforce_eager": True, "seed": 0}


def requests():
    """Greedy and sampled requests of 4 questions, one request per batch (4 batches)."""
    rows = []
    for q in range(4):
        rows.append({"question_id": f"q{q}", "dataset": "d", "kind": "greedy", "sample_indices": [0],
                     "question": f"What is {q} + {q}?", "gold": str(2 * q)})
        rows.append({"question_id": f"q{q}", "dataset": "d", "kind": "sampled", "sample_indices": list(range(3 * q, 3 * q + 3)),
                     "question": f"What is {q} + {q}?", "gold": str(2 * q)})
    return rows


def sample(sampler, in_flight, model):
    import ray

    ds = ray.data.from_items(requests(), override_num_blocks=4).map_batches(
        sampler, fn_constructor_kwargs={"model": model, "prompt": "boxed", "settings": SamplingSettings(max_tokens=24),
                                        "engine_kwargs": ENGINE},
        batch_size=2, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=1, max_concurrent_calls_per_actor=in_flight, max_tasks_in_flight_per_actor=in_flight))
    rows = ds.take_all()
    return sorted(rows, key=lambda r: (r["kind"], r["question_id"], r["sample_idx"]))


def test_async_sampler_returns_the_batch_samplers_rows(ray_cluster, tiny_model):
    """Same rows, ids and columns; greedy texts identical (temperature 0). Sampled texts are not compared:
    vLLM does not promise identical random samples when the engine batches requests differently."""
    batch_rows = sample(VLLMSampler, 1, tiny_model)
    async_rows = sample(AsyncVLLMSampler, 4, tiny_model)
    assert len(batch_rows) == len(async_rows) == 4 + 4 * 3
    key = lambda r: (r["kind"], r["question_id"], r["sample_idx"])  # noqa: E731
    assert [key(r) for r in async_rows] == [key(r) for r in batch_rows]
    assert all(set(r) == set(SAMPLE_COLUMNS) for r in async_rows)
    assert [r["error"] for r in async_rows] == [None] * 16
    greedy = [(r["text"], r["num_tokens"], r["finish_reason"]) for r in async_rows if r["kind"] == "greedy"]
    assert greedy == [(r["text"], r["num_tokens"], r["finish_reason"]) for r in batch_rows if r["kind"] == "greedy"]
    assert all(r["num_tokens"] > 0 for r in async_rows)
