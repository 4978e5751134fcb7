"""The command line every job shares: ``python -m jobs.<name> --config FILE key=value ... [--dry-run]``.

A job is a function of its config, ``run(cfg: <Job>Config) -> <Job>Summary`` (as torchtune's
``recipe_main(cfg)`` and verl's ``run_ppo(config)``); composition (the pipeline, tests, benchmarks) calls
``run``. The command line is two calls of this module::

    def main(argv=None) -> EvaluateSummary:
        return cli.main(argv, EvaluateConfig, run, __doc__, "e.g. limit=2", plan=plan)

    if __name__ == "__main__":
        cli.entry(main, show=lambda summary: summary.table)

``main(argv)`` raises what ``run`` raises (a ``ConfigError`` naming file, line and key); :func:`entry` turns
it into the same message and exit code for every job:

- exit 2, ``error: ...`` on stderr: a bad command line, config or input data (``ConfigError``, ``DataError``),
  found before any work starts;
- exit 1, ``error: ...``: a failure the job names (``errors``, e.g. an unreachable teacher), a full disk,
  or a ``--dry-run`` plan that can never be scheduled;
- exit 0: done (the job's ``show(summary)`` is printed), or a ``--dry-run`` plan that fits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from lib.config import ConfigError, load_config

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S")

DISK_FULL = "error: no space left on the device holding output_dir (or Ray's temp dir); free space and rerun"


def load(model: type[M], argv: list[str] | None, doc: str | None, example: str, *,
         plan: Callable[[M], list] | None = None, flags: dict[str, tuple[str, str]] | None = None) -> M:
    """Parse the command line, set up logging, load and validate the config.

    ``flags``: job-specific options that set a key, ``{"--eval-dir": ("eval_dir", "help")}`` (the value is
    taken as a string, applied after the overrides). With ``--dry-run`` (offered when the job passes its
    ``plan``) print the plan of the resolved config against cluster/values.yaml and exit (``lib.plan.dry_run``):
    no model, no Ray, no output."""
    from lib.progress import setup_logging

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see jobs/configs/)")
    for flag, (key, text) in (flags or {}).items():
        parser.add_argument(flag, dest=key, metavar=key.upper(), help=f"{text} (= {key}=...)")
    parser.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, {example}")
    if plan is not None:
        parser.add_argument("--dry-run", action="store_true", help="print the plan (resources, work, cost) and exit; starts nothing")
    args = parser.parse_args(argv)
    setup_logging()
    overrides = list(args.overrides)
    overrides += [f"{key}={json.dumps(str(getattr(args, key)))}" for key, _ in (flags or {}).values()
                  if getattr(args, key) is not None]  # a JSON string is a YAML string: a path stays a path
    config = load_config(model, args.config, overrides)
    if getattr(args, "dry_run", False):
        from lib.plan import dry_run

        dry_run(plan(config))
    return config


def main(argv: list[str] | None, model: type[M], run: Callable[[M], S], doc: str | None, example: str, *,
         plan: Callable[[M], list] | None = None, flags: dict[str, tuple[str, str]] | None = None) -> S:
    """``run(load(...))``: a job's ``main(argv)``."""
    return run(load(model, argv, doc, example, plan=plan, flags=flags))


def entry(main: Callable[[], Any], show: Callable[[Any], str], *, errors: tuple[type[BaseException], ...] = (),
          resume_note: str = "finished work is kept") -> None:
    """A job's ``__main__``: run ``main()``, print ``show(summary)``; errors become the exit codes above."""
    from lib.data import DataError
    from lib.output_dir import disk_full
    from lib.ray_runtime import quiet_known_noise

    quiet_known_noise()  # before anything imports Ray
    try:
        summary = main()
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except errors as exc:
        raise SystemExit(f"error: {exc}") from None
    except Exception as exc:
        if disk_full(exc):  # not a 140-line Ray traceback with Errno 28 buried inside
            raise SystemExit(f"{DISK_FULL}: {resume_note}") from None
        raise
    print(show(summary))
