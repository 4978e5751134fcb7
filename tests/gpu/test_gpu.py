"""On one CUDA GPU (``make test-gpu``; skipped without CUDA by tests/conftest.py): SFT steps per strategy (plain,
FSDP2, DeepSpeed ZeRO-3; the last two with activation checkpointing too) on a 1-process NCCL group, with the
mask and (if flash-attn is installed) the varlen packing path, each then resumed from its checkpoint and
exported; the SFT job itself through Ray Train with the 7B configs' settings on one GPU worker; one vLLM sample
through jobs.evaluate; one request to the Serve app. The SFT cases passed on one H200 (README, "The SFT job");
the vLLM and Serve ones await a machine with the ``.[gpu]`` extra."""

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
@pytest.mark.parametrize("strategy, checkpointing", [("none", False), ("fsdp", False), ("deepspeed", False),
                                                     ("fsdp", True), ("deepspeed", True)])
def test_one_sft_step_per_strategy_on_one_gpu(strategy, checkpointing, attn, nccl_group, tiny_model, tmp_path):
    """Two steps on the same 8 examples (bf16 compute; with activation checkpointing too, as the 7B configs):
    finite losses, the second lower, weights on cuda:0; then the checkpoint: a fresh trainer that loads it
    takes the same third step (same loss), and the full state dict exports a bf16 HF model that transformers
    loads with the trained weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.prompts import PROMPTS
    from lib.sft import tokenize_example, uses_varlen
    from lib.sft_data import load_pairs
    from lib.train_loop import SFTTrainer, StepSettings, export_hf, micro_batches

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = [tokenize_example(tokenizer, q, s, "boxed", 384) for _, q, s in load_pairs("gsm8k", limit=8)]
    settings = StepSettings(lr=1e-3, total_steps=10, global_batch_size=8, micro_batch_tokens=2048,
                            varlen=uses_varlen(attn))

    def trainer():
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn,
                                                     device_map={"": CUDA})
        ds = {"zero_optimization": {"stage": 3}} if strategy == "deepspeed" else None
        return SFTTrainer(model, settings, strategy, ds, checkpointing, mixed_precision=True, device=CUDA)

    def step(t):
        return t.train_step(micro_batches(examples, list(range(8)), settings, 0), 0)[0]

    first = trainer()
    losses = [step(first) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0], losses
    assert first.step == 2 and torch.cuda.max_memory_allocated() > 0
    assert {p.device for p in first.model.parameters()} == {CUDA}
    first.save(tmp_path / "ckpt", {"epoch": 0, "batch": 1})

    second = trainer()
    assert second.load(tmp_path / "ckpt") == {"epoch": 0, "batch": 1} and second.step == 2
    third = [step(first), step(second)]
    assert third[1] == pytest.approx(third[0], rel=1e-3) and third[0] < losses[1], (losses, third)

    state = second.full_state_dict()
    export = export_hf(tmp_path / "hf", state, tiny_model, tokenizer, {"test": True}, PROMPTS["boxed"])
    exported = AutoModelForCausalLM.from_pretrained(export)
    name = "model.layers.0.mlp.down_proj.weight"
    assert exported.dtype == torch.bfloat16
    assert torch.equal(exported.state_dict()[name], state[name].to("cpu", torch.bfloat16))


def sft_7b_args(strategy: str, model: str, out) -> list[str]:
    """The 7B config of ``strategy`` (bf16, activation checkpointing) on one GPU worker with ``model``: 4 steps of
    8 GSM8K examples at the tiny config's lr, a checkpoint every 2 (the arguments were checked on CPU with
    ``resources.use_gpu=false``: 4 steps, 32 examples, checkpoints 2 and 4)."""
    return ["--config", f"jobs/configs/train_sft_7b_{strategy}.yaml", f"model={model}", "data.source=gsm8k",
            "data.limit=32", "attn_implementation=sdpa", "packing=false", "micro_batch_tokens=4096",
            "global_batch_size=8", "max_steps=4", "checkpoint_every=2", "lr=1e-3", "warmup_steps=1", "log_every=1",
            "resources.num_workers=1", "resources.cpus_per_worker=1", f"output_dir={out}"]


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_the_7b_sft_job_runs_through_ray_train_on_one_gpu(strategy, ray_cluster, tiny_model, tmp_path):
    """jobs.train_sft as the 7B configs run it (Ray Train, use_gpu, NCCL from Ray's TorchConfig, Ray Data ingest,
    bf16, activation checkpointing), shrunk to one GPU worker: 4 finite, falling steps, checkpoints at 2 and 4,
    a bf16 export. The same job with SmolLM2-135M's shape, 6 steps and a SIGKILL + resume ran on one H200
    (README, "The SFT job")."""
    import json

    from safetensors import safe_open

    from jobs.train_sft import main

    out = tmp_path / strategy
    summary = main(sft_7b_args(strategy, tiny_model, out))
    assert (summary.final_metrics["step"], summary.final_metrics["examples_seen"]) == (4, 32)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    kept = sorted(json.loads(p.read_text())["step"] for p in (out / "run").glob("checkpoint_*/trainer_state.json"))
    assert kept == [2, 4]
    with safe_open(out / "hf" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


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
