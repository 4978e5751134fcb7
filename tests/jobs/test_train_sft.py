"""SFT on Ray Train with 2 CPU workers (gloo): a DeepSpeed ZeRO-3 run and an FSDP2 run that is SIGKILLed after
its step-2 checkpoint and rerun give the same data order and losses, and lower the loss; the FSDP run's bf16
export evaluates with vLLM and Serve answers chat (through the prompt SFT trained on) and completions from it.
(The default-CPU config is in its own module, test_train_sft_default.py: `make test`'s xdist workers take a
module at a time.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.train_sft import main

REPO = Path(__file__).resolve().parents[2]
TINY = "jobs/configs/train_sft_tiny.yaml"
pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def steps(out: Path) -> dict[int, dict]:
    """metrics.jsonl by step (a step logged twice, before and after a kill, keeps its last record)."""
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


# 8 examples, a global batch of 8, 6 epochs: the same examples every step (each step is one epoch), a
# checkpoint every 2 steps; the tiny base model (BOS, no chat template) with the xwin prompt.
REPEATED = ["--config", TINY, "model=tiny-base", "prompt=xwin", "data.limit=8", "global_batch_size=8", "epochs=6",
            "max_steps=null", "checkpoint_every=2"]


def kill_after_first_checkpoint(out: Path) -> None:
    """Run REPEATED (FSDP) as its own process with its own Ray and SIGKILL its whole process group once the first
    checkpoint is on disk."""
    proc = subprocess.Popen([sys.executable, "-m", "jobs.train_sft", *REPEATED, f"output_dir={out}"], cwd=REPO,
                            env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not list((out / "run").glob("checkpoint_*/trainer_state.json")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def repeated_batch_runs(ray_cluster, tmp_path_factory) -> dict:
    """Two runs of REPEATED: DeepSpeed uninterrupted, and FSDP killed after its step-2 checkpoint then rerun in
    this process to the end. The uninterrupted run a resume is compared with is the other strategy's, at the
    tolerance the strategies agree to (1e-4): a resume that loses the optimizer state, the schedule or the data
    position moves the losses by 1e-3 or more here. One run fewer than an uninterrupted run per strategy."""
    root = tmp_path_factory.mktemp("sft")
    runs = {"deepspeed": root / "deepspeed", "fsdp": root / "fsdp"}
    main([*REPEATED, f"output_dir={runs['deepspeed']}", "strategy=deepspeed"])
    kill_after_first_checkpoint(runs["fsdp"])
    killed_at = max(steps(runs["fsdp"]))
    summary = main([*REPEATED, f"output_dir={runs['fsdp']}"])  # fsdp: the tiny config's strategy
    return {**runs, "killed_at": killed_at, "summary": summary}


def test_fsdp_and_deepspeed_lower_the_loss_on_a_repeated_batch_identically(repeated_batch_runs):
    """Both strategies lower the loss at every step on the repeated batch and agree to 1e-4 with the same
    batches; both export an HF directory and keep the last 2 checkpoints (steps 4 and 6). A checkpoint the killed
    FSDP run wrote can stay beside them: killed after writing it and before Ray Train recorded it for retention
    (seen once in a clean-clone run: steps 2, 4, 6)."""
    runs = {}
    for strategy in ("fsdp", "deepspeed"):
        out = repeated_batch_runs[strategy]
        runs[strategy] = steps(out)
        assert sorted(runs[strategy]) == [1, 2, 3, 4, 5, 6]
        assert all(sorted(r["batch"]) == list(range(8)) for r in runs[strategy].values())
        losses = [runs[strategy][s]["loss"] for s in range(1, 7)]
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        hf = out / "hf"
        assert {"config.json", "model.safetensors", "tokenizer.json", "training_args.json"} <= {p.name for p in hf.iterdir()}
        assert json.loads((hf / "training_args.json").read_text())["steps"] == 6
        kept = sorted(json.loads((p / "trainer_state.json").read_text())["step"] for p in (out / "run").glob("checkpoint_*") if p.is_dir())
        if strategy == "deepspeed":
            assert kept == [4, 6]
        else:  # the killed run's checkpoint can outlive it: killed before Ray Train recorded it for retention
            assert kept[-2:] == [4, 6] and all(s <= repeated_batch_runs["killed_at"] for s in kept[:-2]), kept
    for s in range(1, 7):
        assert runs["fsdp"][s]["loss"] == pytest.approx(runs["deepspeed"][s]["loss"], abs=1e-4)
        assert runs["fsdp"][s]["batch"] == runs["deepspeed"][s]["batch"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(repeated_batch_runs):
    """The FSDP job was killed (SIGKILL, its whole process group, its own Ray) after the step-2 checkpoint; the
    rerun resumed there (at an epoch boundary: mid-epoch positions are unit-tested in tests/lib/test_stages.py):
    every step consumes the same examples in the same order as the uninterrupted run, examples_seen agrees, and
    the losses agree to 1e-4."""
    assert 2 <= repeated_batch_runs["killed_at"] < 6, f"killed at step {repeated_batch_runs['killed_at']}"
    assert repeated_batch_runs["summary"].resumed_from is not None
    a, b = steps(repeated_batch_runs["deepspeed"]), steps(repeated_batch_runs["fsdp"])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in range(1, 7):
        assert a[s]["batch"] == b[s]["batch"] and a[s]["examples_seen"] == b[s]["examples_seen"] == 8 * s
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], abs=1e-4)
    assert len({tuple(b[s]["batch"]) for s in range(1, 7)}) > 1  # reshuffled per epoch: the order is checked


def test_a_base_model_export_is_bf16_evaluates_with_vllm_and_answers_chat_as_trained(repeated_batch_runs, tmp_path):
    """The FSDP run's export of the tiny base model (BOS, no chat template) fine-tuned with xwin: its weights
    are bf16 and it records its prompt; jobs.evaluate samples it with vLLM; Serve's chat route renders the user
    message through xwin (the prompt ids SFT trained on: usage.prompt_tokens says so); a multi-turn chat is a 400;
    n=4 choices and a completion of exactly max_tokens come back from the checkpoint directory (this replaced a
    test that served the tiny random model: one engine start for both)."""
    import openai
    from ray import serve
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from jobs.evaluate import main as evaluate
    from lib.openai_server import free_port
    from lib.prompts import get_prompt, load_model_prompt
    from serve.app import build_app

    hf = repeated_batch_runs["fsdp"] / "hf"
    with safe_open(hf / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model_prompt(hf) == get_prompt("xwin")
    assert json.loads((hf / "training_args.json").read_text())["prompt"]["name"] == "xwin"
    metrics = evaluate(["--config", "jobs/configs/evaluate_tiny.yaml", f"model={hf}", "prompt=xwin", "limit=2",
                        "samples_per_question=2", "max_tokens=8", f"output_dir={tmp_path / 'eval'}"]).metrics
    gsm = metrics["gsm8k"]
    assert gsm["num_questions"] == 2 and gsm["samples_per_question"] == 2
    assert sum(gsm["status_counts"].values()) == 4 and gsm["status_counts"].get("error", 0) == 0

    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert tokenizer.chat_template is None
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model": str(hf), "served_name": "sft", "api_keys_env": None, "allow_no_auth": True,
                             "engine": {"gpu_memory_utilization": 0.2, "enforce_eager": True, "max_model_len": 512}}),
                  name="sft", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "What is 1+1?"}],
                                              max_tokens=4, temperature=0)
        assert chat.usage.prompt_tokens == len(get_prompt("xwin").token_ids("What is 1+1?", tokenizer))
        with pytest.raises(openai.BadRequestError, match="single-turn prompt 'xwin'"):
            client.chat.completions.create(model="sft", max_tokens=4, messages=[
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+1?"}])
        chat = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "hello"}], n=4,
                                              max_tokens=16, temperature=1.0, seed=0, stop=["NEVER-STOP"])
        assert [c.index for c in chat.choices] == [0, 1, 2, 3]  # n choices, one prompt counted once
        assert chat.usage.prompt_tokens == len(get_prompt("xwin").token_ids("hello", tokenizer))
        lengths = sum(c.finish_reason == "length" for c in chat.choices)
        assert 16 * lengths + (4 - lengths) <= chat.usage.completion_tokens <= 64
        done = client.completions.create(model="sft", prompt="a b c", max_tokens=5, temperature=0)
        assert done.usage.completion_tokens == 5 and done.choices[0].finish_reason == "length"
    finally:
        serve.shutdown()
