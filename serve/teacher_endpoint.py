"""This project's Serve app as an OpenAI-compatible endpoint for a job in the same Ray cluster (the pipeline's
teacher): the caller gets a ``base_url``, an API key and the served model name, and never touches the app's
internals (``serve.app``, its deployments, its argument schema).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("mathray.serve")


@dataclass(frozen=True)
class Endpoint:
    """Where the endpoint answers: ``base_url`` (``http://127.0.0.1:PORT/v1``), its key, the model name to ask for."""

    base_url: str
    api_key: str = field(repr=False)  # not in the repr: the key never reaches a log line through this object
    model: str


@contextlib.contextmanager
def local_endpoint(serve_config: str | Path, key_file: str | Path, port: int | None = None,
                   name: str = "mathray-teacher") -> Iterator[Endpoint]:
    """Run the first application of ``serve_config`` (a Serve config YAML) on 127.0.0.1:``port`` (None: a free
    port) in the running Ray cluster, with a fresh API key as its only key: written to ``key_file`` (mode 0600,
    which the replicas read), never to an environment variable Ray records. Serve is shut down on exit, so
    later work gets the CPUs back."""
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from lib.openai_server import free_port
    from serve.app import build_app

    schema = ServeDeploySchema.model_validate(yaml.safe_load(Path(serve_config).read_text()))
    app = schema.applications[0]
    key, key_file = secrets.token_hex(16), Path(key_file)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    args = {**(app.args or {}), "api_keys_env": None, "api_keys_file": str(key_file.resolve())}
    port = port or free_port()
    log.info("starting the Serve app of %s on 127.0.0.1:%d", serve_config, port)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=name, route_prefix="/")
    try:
        yield Endpoint(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, model=args.get("served_name", "mathray"))
    finally:
        serve.shutdown()
