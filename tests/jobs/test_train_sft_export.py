"""A base model's bf16 HF export from the SFT job evaluates with vLLM and answers Serve's chat route with the
prompt it was trained on (its own module: `make test`'s xdist workers take a module at a time)."""

import pytest

from jobs.train_sft import main
from tests.jobs.test_train_sft import TINY

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def test_a_base_model_export_is_bf16_evaluates_with_vllm_and_answers_chat_as_trained(tmp_path):
    """The tiny base model (BOS, no chat template) fine-tuned with xwin: the export's weights are bf16 and it
    records its prompt; jobs.evaluate samples it with vLLM; Serve's chat route renders the user message
    through xwin (the prompt ids SFT trained on: usage.prompt_tokens says so); a multi-turn chat is a 400."""
    import json as _json

    import openai
    from ray import serve
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from jobs.evaluate import main as evaluate
    from lib.openai_server import free_port
    from lib.prompts import get_prompt, load_model_prompt
    from serve.app import build_app

    out = tmp_path / "sft"
    main(["--config", TINY, "model=tiny-base", "prompt=xwin", f"output_dir={out}", "max_steps=2", "checkpoint_every=2"])
    hf = out / "hf"
    with safe_open(hf / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert _json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model_prompt(hf) == get_prompt("xwin")
    assert _json.loads((hf / "training_args.json").read_text())["prompt"]["name"] == "xwin"
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
    finally:
        serve.shutdown()
