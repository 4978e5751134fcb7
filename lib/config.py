"""Job configuration: one pydantic model per job, loaded from YAML with dotted ``key=value`` overrides.

Every model derives from :class:`StrictModel` (``extra="forbid"``), so an unknown key is an error that
names the key. Errors name the file and, for keys present in the YAML, its line.

A job config also says which of its keys change a run's meaning (``run_only_keys``, ``resume_keys``), read by
:func:`run_identity` (the pipeline's stage identity) and :func:`resume_conflicts` (a job's resume guard).
:class:`JobSummary` is the base of what a job's ``run(cfg)`` returns and writes as ``summary.json``. The command
line (``--config FILE key=value ...``) is ``lib.cli``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names file, line and key."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Keys (dotted for nested ones) that change how or where a run goes, not what it produces (resources,
    #: logging, output_dir): a finished run made with other values of these is the same run.
    run_only_keys: ClassVar[frozenset[str]] = frozenset()
    #: Top-level keys that stored outputs depend on and a resume cannot mix: a rerun into an output_dir
    #: recorded with other values of these is refused.
    resume_keys: ClassVar[tuple[str, ...]] = ()


def run_identity(config: StrictModel) -> dict[str, Any]:
    """What decides a run's outputs: the config as JSON data without its ``run_only_keys``."""
    data = config.model_dump(mode="json")
    for key in type(config).run_only_keys:
        *parents, last = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def resume_conflicts(config: StrictModel, output_dir: Path) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, now)}`` for each of the config's ``resume_keys`` whose value differs from the one
    recorded in ``output_dir/config.yaml`` (empty when nothing is recorded there)."""
    previous = Path(output_dir) / "config.yaml"
    if not previous.exists():
        return {}
    old = yaml.safe_load(previous.read_text()) or {}
    return {k: (old[k], getattr(config, k)) for k in type(config).resume_keys if k in old and old[k] != getattr(config, k)}


class JobSummary(BaseModel):
    """Base of what a job's ``run(cfg)`` returns; :meth:`write` puts it in ``output_dir/summary.json``.
    Fields marked ``exclude=True`` are for the caller only (a printed table, the full metrics) and stay out of the file."""

    model_config = ConfigDict(extra="forbid")

    def write(self, output_dir: str | Path) -> None:
        path = Path(output_dir) / "summary.json"
        path.write_text(json.dumps(self.model_dump(), indent=2, default=str) + "\n")


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


def _set(data: dict, path: list[str], value: Any, what: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{what}: {part!r} is not a mapping")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for override in overrides:
        path, value = parse_override(override)
        _set(data, path, value, f"override {override!r}")
    return data


def updated(config: M, updates: dict[str, Any]) -> M:
    """A validated copy of ``config`` with dotted-key ``updates`` (``{"data.limit": 32, "strategy": "fsdp"}``):
    what ``key=value`` overrides do on the command line, for callers that hold a config object."""
    data = config.model_dump()
    for key, value in updates.items():
        _set(data, key.split("."), value, f"update {key!r}")
    try:
        return type(config).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid update {updates}: {exc}") from None


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
    """Kept for callers written before ``lib.cli``: :func:`lib.cli.load`."""
    from lib.cli import load

    return load(model, argv, doc, example, plan=plan)
