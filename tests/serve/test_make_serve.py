"""`python -m serve` (what `make serve` runs) starts its own Ray, prints the curl example once ready, and
answers the OpenAI client; SIGTERM shuts it down."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from lib.openai_server import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_python_m_serve_answers_the_openai_client(default_model, tmp_path):
    port = free_port()
    env = {**os.environ, "MATHRAY_API_KEYS": "make-serve-key", "RAY_ADDRESS": ""}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve", "--config", "serve/configs/serve_default_cpu.yaml",
                                 "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops it" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready after 300 s"
            time.sleep(1)
        text = log.read_text()
        # the example names the env var (first comma-separated key, double quotes so the shell expands it),
        # never the key itself
        assert re.search(rf'curl -s http://127.0.0.1:{port}/v1/chat/completions -H "Authorization: Bearer '
                         r'\$\{MATHRAY_API_KEYS%%,\*\}"', text)
        assert "make-serve-key" not in text
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="make-serve-key", max_retries=0)
        reply = client.chat.completions.create(model="mathray", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
        assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
