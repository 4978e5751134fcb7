"""The Serve app with the tiny random Llama (any checkpoint directory as `model`): the OpenAI client gets
exactly the requested number of choices and tokens back."""

import openai
import pytest

pytestmark = pytest.mark.slow


def test_tiny_checkpoint_serves_chat_and_completions(ray_cluster, tiny_model, tmp_path):
    from ray import serve

    from lib.openai_server import free_port
    from serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model": tiny_model, "served_name": "tiny", "api_keys_env": None, "allow_no_auth": True,
                             "engine": {"gpu_memory_utilization": 0.2, "enforce_eager": True, "max_model_len": 512}}),
                  name="tiny", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], n=4,
                                              max_tokens=16, temperature=1.0, stop=["NEVER-STOP"])
        assert len(chat.choices) == 4 and chat.usage.completion_tokens == 64  # random weights never stop early
        done = client.completions.create(model="tiny", prompt="a b c", max_tokens=5, temperature=0)
        assert done.usage.completion_tokens == 5 and done.choices[0].finish_reason == "length"
    finally:
        serve.shutdown()
