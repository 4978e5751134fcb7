"""Run the endpoint locally from a Serve config YAML, print how to call it once it is ready, and keep
serving until Ctrl-C (what ``serve run`` does, plus the readiness wait and the example).

Run: python -m serve --config serve/configs/serve_default_cpu.yaml [--port 8000]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

import yaml

from lib.progress import setup_logging

log = logging.getLogger("mathray.serve")


def example_command(app_args, base: str) -> str:
    """A curl call of the endpoint that names where the key is and never contains a key: the env var's
    first comma-separated key (expanded by the shell, so double quotes), or the key file's first key."""
    env_set = bool(app_args.api_keys_env and os.environ.get(app_args.api_keys_env))
    if env_set or (app_args.api_keys_env and not app_args.api_keys_file):
        auth = f'-H "Authorization: Bearer ${{{app_args.api_keys_env}%%,*}}" '
    elif app_args.api_keys_file:
        auth = f'-H "Authorization: Bearer $(grep -v \'^#\' {app_args.api_keys_file} | head -1)" '
    else:
        auth = ""
    body = (f'{{"model": "{app_args.served_name}", "messages": [{{"role": "user", "content": '
            f'"What is 12*7? Put the answer in \\\\boxed{{}}."}}], "max_tokens": 128, '
            f'"mathray": {{"selection": "majority", "n": 8}}}}')
    return f"  curl -s {base}/v1/chat/completions {auth}-H 'Content-Type: application/json' \\\n    -d '{body}'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve/configs/serve_default_cpu.yaml")
    parser.add_argument("--port", type=int, default=None, help="override http_options.port")
    args = parser.parse_args()
    setup_logging()

    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_app
    from serve.config import ServeArgs

    config = ServeDeploySchema.model_validate(yaml.safe_load(open(args.config)))
    app_config = config.applications[0]
    http = config.http_options.model_dump() if config.http_options else {}
    host, port = http.get("host", "127.0.0.1"), args.port or http.get("port", 8000)
    app_args = ServeArgs.model_validate(app_config.args or {})
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    start = time.monotonic()
    serve.run(build_app(app_config.args or {}), name=app_config.name, route_prefix=app_config.route_prefix or "/")
    base = f"http://{host}:{port}"
    print(f"\nmathray is serving {app_args.served_name!r} on {base} (ready after {time.monotonic() - start:.0f} s). Try:\n\n"
          f"{example_command(app_args, base)}\n\n"
          f"  or the OpenAI client: openai.OpenAI(base_url=\"{base}/v1\", api_key=...)\n"
          f"Ctrl-C stops it.", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    log.info("shutting down (graceful: in-flight requests finish first)")
    serve.shutdown()


if __name__ == "__main__":
    main()
