"""Job configuration: one pydantic model per job, loaded from YAML with dotted ``key=value`` overrides.

Every model derives from :class:`StrictModel` (``extra="forbid"``), so an unknown key is an error that
names the key. Errors name the file and, for keys present in the YAML, its line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names file, line and key."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each mapping key path in a YAML document to its (1-based) line number."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                walk(value, path + (str(i),))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def parse_override(override: str) -> tuple[list[str], Any]:
    """``"engine.max_num_seqs=64"`` -> (["engine", "max_num_seqs"], 64); the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. limit=4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {exc}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for override in overrides:
        path, value = parse_override(override)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a mapping")
            node = child
        node[path[-1]] = value
    return data


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML) into ``model``, apply ``overrides``, validate; errors name file/line/key."""
    text, where, lines = "", "<no config file>", {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text, where = path.read_text(), str(path)
        try:
            lines = _key_lines(text)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: top level must be a mapping of keys, got {type(data).__name__}")
    else:
        data = {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            key = ".".join(loc) or "<root>"
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            at = f"{where}:{line}" if line else where
            problems.append(f"{at}: key {key!r}: {err['msg']}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None


def package_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of the given distributions (None where not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path | None = None) -> str | None:
    """The repository's current commit (with ``-dirty`` when it has local changes), or None."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def dump_config(config: BaseModel, path: Path, extra: dict | None = None) -> None:
    """Write the resolved config (plus provenance in ``extra``) as YAML."""
    data = config.model_dump(mode="json")
    if extra:
        data = {**data, "_provenance": extra}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def job_config(model: type[M], argv: list[str] | None, doc: str | None, example: str,
               plan: Callable[[M], list] | None = None) -> M:
    """``python -m jobs.X --config FILE key=value ... [--dry-run]``: parse the command line, set up logging, load.

    With ``--dry-run`` (offered when the job passes its ``plan``), print the plan of the resolved config
    against cluster/values.yaml and exit (``lib.plan.dry_run``): no model, no Ray, no output."""
    from lib.progress import setup_logging

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see jobs/configs/)")
    parser.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, {example}")
    if plan is not None:
        parser.add_argument("--dry-run", action="store_true", help="print the plan (resources, work, cost) and exit")
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config(model, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from lib.data import DataError
        from lib.plan import dry_run

        try:
            stages = plan(config)
        except DataError as exc:
            raise SystemExit(f"error: {exc}") from None
        dry_run(stages)
    return config
