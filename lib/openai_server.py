"""Start vLLM's own OpenAI-compatible server on 127.0.0.1 as a child process (a local teacher, a baseline).

    with LocalOpenAIServer("default", served_name="smollm2") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")

The server's output goes to ``log_path`` (a temporary file by default); a failed start raises with its tail.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import Field

from lib.config import StrictModel

log = logging.getLogger("mathray.openai_server")


class LocalServerConfig(StrictModel):
    """vLLM's OpenAI server started by the job for its duration (CPU defaults: small KV cache, eager)."""

    model: str = Field("default", description="'default' (embedded SmolLM2), a checkpoint directory, or a hub id")
    served_name: str = "mathray-teacher"
    port: int | None = Field(None, ge=1, le=65535, description="None: a free port")
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="on CPU: fraction of RAM for the KV cache")
    max_model_len: int = 2048
    dtype: str = Field("auto", description="see EngineConfig.dtype in lib/sampling.py")
    enforce_eager: bool = True
    cpu_threads_bind: str = Field("all", description="see EngineConfig.cpu_threads_bind in lib/sampling.py")
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: float = Field(600, gt=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalOpenAIServer:
    """``python -m vllm.entrypoints.openai.api_server`` for one model on 127.0.0.1."""

    def __init__(self, config: LocalServerConfig | None = None, log_path: str | Path | None = None):
        self.config = config or LocalServerConfig()
        self.port = self.config.port or free_port()
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        from lib.models import resolve_model
        from lib.sampling import engine_dtype

        c = self.config
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(c.model),
               "--served-model-name", c.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--gpu-memory-utilization", str(c.gpu_memory_utilization), "--max-model-len", str(c.max_model_len),
               "--dtype", engine_dtype(c.dtype), "--disable-uvicorn-access-log"]
        if c.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(c.extra_args)

    def start(self) -> LocalOpenAIServer:
        from lib.sampling import cpu_engine_env

        # uvicorn's 5 s keep-alive closes a client actor's pooled connections between batches, and a request
        # racing that close fails ("Server disconnected") and is retried; a longer idle window avoids most.
        env = {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "75", **os.environ, **cpu_engine_env(self.config.cpu_threads_bind)}
        cmd = self.command()
        log.info("starting vLLM's OpenAI server on %s (log: %s)", self.base_url, self.log_path)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        start = time.monotonic()
        while time.monotonic() - start < self.config.startup_timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM's server exited with code {self.process.returncode} while starting:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        log.info("vLLM's server is up after %.0f s", time.monotonic() - start)
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM's server did not answer within {self.config.startup_timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_one_endpoint(local_server: LocalServerConfig | None, base_url: str | None, key: str, role: str) -> None:
    """A job talks to one endpoint: the server it starts itself (``local_server``) or ``<key>.base_url``."""
    if local_server is not None and base_url is not None:
        raise ValueError(f"set either local_server (the job starts the {role}) or {key}.base_url, not both")
