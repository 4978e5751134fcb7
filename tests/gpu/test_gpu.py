"""On one CUDA GPU (``make test-gpu``; skipped without CUDA by tests/conftest.py): one SFT step per strategy
(plain, FSDP2, DeepSpeed ZeRO-3) on a 1-process NCCL group, with the mask and (if flash-attn is installed)
the varlen packing path; one vLLM sample through jobs.evaluate; one request to the Serve app."""

import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def nccl_group():
    import torch.distributed as dist

    from lib.openai_server import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    torch.cuda.set_device(CUDA)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=CUDA)
    yield
    dist.destroy_process_group()


def attention_paths():
    import importlib.util

    return ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


@pytest.mark.parametrize("attn", attention_paths())
@pytest.mark.parametrize("strategy", ["none", "fsdp", "deepspeed"])
def test_one_sft_step_per_strategy_on_one_gpu(strategy, attn, nccl_group, tiny_model):
    """Two steps on the same 8 examples (bf16 compute): finite losses, the second lower, weights on cuda:0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.sft import tokenize_example, uses_varlen
    from lib.sft_data import load_pairs
    from lib.train_loop import SFTTrainer, StepSettings, micro_batches

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [tokenize_example(tokenizer, q, s, "boxed", 384) for _, q, s in load_pairs("gsm8k", limit=8)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn,
                                                 device_map={"": CUDA})
    settings = StepSettings(lr=1e-3, total_steps=10, global_batch_size=8, micro_batch_tokens=2048,
                            varlen=uses_varlen(attn))
    ds = {"zero_optimization": {"stage": 3}} if strategy == "deepspeed" else None
    trainer = SFTTrainer(model, settings, strategy, ds, mixed_precision=True, device=CUDA)
    losses = [trainer.train_step(micro_batches(examples, list(range(8)), settings, 0), 0)[0] for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0], losses
    assert trainer.step == 2 and torch.cuda.max_memory_allocated() > 0


def test_one_vllm_sample_through_evaluate(ray_cluster, tiny_model, tmp_path):
    from jobs.evaluate import main as evaluate

    metrics = evaluate(["--config", "jobs/configs/evaluate_tiny.yaml", f"model={tiny_model}", "limit=1",
                        "samples_per_question=1", "greedy=false", "max_tokens=8", "resources.gpus_per_engine=1",
                        "engine.enforce_eager=false", f"output_dir={tmp_path}"]).metrics
    assert sum(metrics["gsm8k"]["status_counts"].values()) == 1


def test_one_serve_request(ray_cluster, tiny_model):
    import openai
    from ray import serve

    from lib.openai_server import free_port
    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model": tiny_model, "served_name": "tiny", "api_keys_env": None, "allow_no_auth": True,
                             "model_replicas": {"num_gpus": 1},
                             "engine": {"gpu_memory_utilization": 0.3, "max_model_len": 512}}), name="tiny", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        done = client.completions.create(model="tiny", prompt="a b c", max_tokens=5, temperature=0)
        assert done.usage.completion_tokens == 5
    finally:
        serve.shutdown()
