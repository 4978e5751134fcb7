"""Load every benchmark in ``../shared/data`` (and user JSONL/Parquet files) into one schema.

Each row becomes a :class:`Question` with a stable id, the question text and the gold final
answer as a string. The registry :data:`DATASETS` says, per dataset, which file holds each split,
which fields form the question and how the gold answer is taken from the row::

    load_dataset("gsm8k", limit=10)                     # registry name, split "test"
    load_dataset("math", split="train")                 # math/train.jsonl.gz, read transparently
    load_dataset("my.parquet", columns={"question": "prompt", "answer": "final"})

Bad input raises :class:`DataError` naming the file, the line (or Parquet row) and the field,
before any work starts. Question formats follow Qwen2.5-Math's ``evaluation/parser.py`` for the
OOD sets (SVAMP body + ".", ASDiv units dropped, SAT "Answer Choices: (A) ...").
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, TypeAdapter, field_validator

from lib.config import ConfigError, StrictModel
from lib.extraction import last_boxed

DATA_DIR_ENV = "MATHRAY_DATA_DIR"
CHECKOUT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # ../shared/data
SHIPPED_DATA_NAME = "data"  # cluster/runtime_env.yaml ships ../shared/data as py_modules: <ray pkg dir>/data
SHARED_DATA_DIR: Path = Path(os.environ.get(DATA_DIR_ENV) or CHECKOUT_DATA_DIR)

COLUMN_KEYS = ("id", "question", "answer", "level", "type")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


class DataError(ValueError):
    """Bad dataset input: unknown name, missing file, malformed line, missing field, empty file."""


@dataclass(frozen=True)
class Question:
    """One benchmark question in the common schema."""

    id: str  # stable and unique within a dataset, e.g. "gsm8k/test/0", "math/test/algebra/1.json"
    dataset: str
    question: str
    answer: str  # gold final answer; "" only where the source has none
    level: str | None = None
    type: str | None = None
    source: str | None = None  # the file the row came from

    def content_hash(self) -> str:
        """A hash of what a stored sample's grade depends on (question text and gold answer): an evaluation
        resume compares it per id, since a user file's ids are row indices that shift when lines move."""
        return hashlib.sha256(f"{self.question}\0{self.answer}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetSpec:
    """How one registry dataset maps onto :class:`Question`.

    ``question`` fields are stripped and joined with a space; ``period_after_first`` ends the
    first part with "." when it lacks one (SVAMP); ``options`` is appended as SAT answer choices.
    ``answer`` is ``None`` when the source has no gold answers. ``id_field`` names a field that is
    already a unique path (MATH's ``unique_id``); without it the id is ``<name>/<split>/<row>``.
    """

    files: Mapping[str, str]  # split -> file relative to the data dir
    question: tuple[str, ...]
    answer: str | None
    answer_format: str = "raw"  # a key of ANSWER_FORMATS
    id_field: str | None = None
    level: str | None = None
    type: str | None = None
    options: str | None = None
    period_after_first: bool = False
    level_prefix: str = ""


def gsm8k_gold(answer_text: str) -> str:
    """The GSM8K final answer: the text after the last ``####``, commas removed, stripped."""
    if "####" not in answer_text:
        raise DataError("no '####' in GSM8K answer text")
    return answer_text.rsplit("####", 1)[1].replace(",", "").strip()


def math_gold(solution: str) -> str:
    """The MATH final answer: content of the last ``\\boxed{...}`` (nested braces kept)."""
    boxed = last_boxed(solution)
    if boxed is None:
        raise DataError("no \\boxed{...} in solution")
    return boxed.strip()


def _no_units(text: str) -> str:
    """ASDiv: drop parenthesised units, "9 (apples)" -> "9" (as Qwen2.5-Math does)."""
    return re.sub(r"\(.*?\)", "", text).strip()


ANSWER_FORMATS: dict[str, Callable[[str], str]] = {
    "raw": str.strip,
    "gsm8k": gsm8k_gold,
    "boxed": math_gold,
    "no_commas": lambda text: text.replace(",", "").strip(),
    "no_units": _no_units,
}


def _qwen(name: str, **kwargs: Any) -> DatasetSpec:
    """A test-only dataset stored as ``<name>/test.jsonl`` (the Qwen2.5-Math layout)."""
    return DatasetSpec(files={"test": f"{name}/test.jsonl"}, **kwargs)


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec(
        files={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        question=("question",), answer="answer", answer_format="gsm8k",
    ),
    "math": DatasetSpec(
        files={"train": "math/train.jsonl.gz", "test": "math/test.jsonl"},
        question=("problem",), answer="solution", answer_format="boxed",
        id_field="unique_id", level="level", type="type",
    ),
    "math500": _qwen("math500", question=("problem",), answer="answer", id_field="unique_id",
                     level="level", type="subject", level_prefix="Level "),
    "gsm8k_xwin_eval": _qwen("gsm8k_xwin_eval", question=("question",), answer="answer",
                             answer_format="no_commas"),
    "svamp": _qwen("svamp", question=("Body", "Question"), answer="Answer", type="Type",
                   period_after_first=True),
    "asdiv": _qwen("asdiv", question=("body", "question"), answer="answer",
                   answer_format="no_units", type="solution_type"),
    "mawps": _qwen("mawps", question=("input",), answer="target", type="type"),
    "college_math": _qwen("college_math", question=("question",), answer="answer", type="data_topic"),
    "minerva_math": _qwen("minerva_math", question=("problem",), answer="solution",
                          answer_format="boxed", type="type"),
    "olympiadbench": _qwen("olympiadbench", question=("question",), answer="final_answer",
                           type="subfield"),
    "aime24": _qwen("aime24", question=("problem",), answer="answer"),
    "amc23": _qwen("amc23", question=("problem",), answer="answer"),
    "gaokao2023en": _qwen("gaokao2023en", question=("question",), answer="answer"),
    "sat_math": _qwen("sat_math", question=("question",), answer="Answer", options="options"),
    "hungarian_exam": _qwen("hungarian_exam", question=("problem",), answer=None),
}


def data_dir_candidates(data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Where registry files are looked for, in this order, as ``(where, directory)``.

    An explicit ``data_dir`` (a job config's ``data_dir`` key) is the only place looked at. Otherwise:
    ``$MATHRAY_DATA_DIR``; the copy shipped with a Ray job (``cluster/runtime_env.yaml`` uploads
    ``../shared/data`` as a ``py_modules`` entry, which lands on the job's ``sys.path``); ``../shared/data``
    beside this checkout; ``$MATHRAY_HOME/data`` (where ``python -m lib.data stage`` copies to by default).
    """
    if data_dir is not None and str(data_dir):
        return [("data_dir", Path(data_dir).expanduser())]
    from lib.models import mathray_home

    out = []
    if os.environ.get(DATA_DIR_ENV):
        out.append((f"${DATA_DIR_ENV}", Path(os.environ[DATA_DIR_ENV]).expanduser()))
    for entry in sys.path:
        if "py_modules_files" in entry and (Path(entry) / SHIPPED_DATA_NAME).is_dir():
            out.append(("shipped with the Ray job (runtime_env py_modules)", Path(entry) / SHIPPED_DATA_NAME))
    out.append(("../shared/data beside the checkout", CHECKOUT_DATA_DIR))
    out.append(("$MATHRAY_HOME/data", mathray_home() / "data"))
    return out


def resolve_data_file(relative: str, data_dir: str | Path | None = None) -> Path:
    """The first of :func:`data_dir_candidates` that holds ``relative`` (e.g. ``gsm8k/test.jsonl``);
    DataError naming every place looked at when none does."""
    candidates = data_dir_candidates(data_dir)
    for _, directory in candidates:
        if (directory / relative).is_file():
            return directory / relative
    looked = "\n".join(f"  {i}. {directory / relative}  ({where})" for i, (where, directory) in enumerate(candidates, 1))
    raise DataError(f"file not found: {relative}; looked in:\n{looked}\n"
                    f"Set data_dir= or ${DATA_DIR_ENV} to a copy of ../shared/data, or copy it to shared storage "
                    "with `python -m lib.data stage DEST`.")


def stage_data(destination: str | Path, source: str | Path | None = None) -> tuple[Path, int]:
    """Copy every registry file (``source`` default: the first candidate holding ``gsm8k/test.jsonl``) to
    ``destination`` with the same layout, e.g. shared storage every node mounts; returns (destination, files).
    Files already there with the same size are kept, so a rerun copies only what is missing."""
    src = Path(source) if source is not None else resolve_data_file(DATASETS["gsm8k"].files["test"]).parent.parent
    dest = Path(destination).expanduser()
    copied = 0
    for spec in DATASETS.values():
        for relative in spec.files.values():
            target, origin = dest / relative, src / relative
            if not origin.is_file():
                raise DataError(f"stage: {origin} does not exist (source {src} lacks {relative})")
            if target.is_file() and target.stat().st_size == origin.stat().st_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(origin, tmp)
            tmp.rename(target)
            copied += 1
    return dest, copied


def dataset_names() -> list[str]:
    """Names of the registry datasets and the generated ones (GSM-Symbolic), sorted."""
    from lib.gsm_symbolic import DATASETS as GENERATED  # imports this module

    return sorted([*DATASETS, *GENERATED])


class DatasetRef(StrictModel):
    """A registry dataset (``name``) or a user file (``path`` + ``columns``): one entry of a job's dataset list."""

    name: str | None = None
    path: str | None = None
    split: str = "test"
    columns: dict[str, str] | None = None
    answer_format: str = "raw"
    instances: int | None = Field(None, ge=1, description="GSM-Symbolic datasets: instances per template (default 1); limit counts templates")
    seed: int = Field(0, description="GSM-Symbolic datasets: the instances' seed")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and name not in dataset_names():
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
        return name


def check_names(refs: list) -> list:
    """Validator body: every bare name in ``refs`` is a registry dataset."""
    for ref in refs:
        if isinstance(ref, str) and ref not in dataset_names():
            raise ValueError(f"unknown dataset {ref!r}; known: {', '.join(dataset_names())}")
    return refs


def load_refs(refs: list[str | DatasetRef], limit: int | None, split: str, key: str, data_dir: str | None = None) -> list[Question]:
    """Questions of registry names (``split``) and refs, first ``limit`` of each; ids must be unique
    (``key`` names the config key in the error)."""
    questions = []
    for ref in refs:
        if isinstance(ref, str):
            questions += load_dataset(ref, split=split, limit=limit, data_dir=data_dir)
        elif ref.name:
            questions += load_dataset(ref.name, split=ref.split, limit=limit, data_dir=data_dir,
                                      instances=ref.instances, seed=ref.seed)
        else:
            questions += load_dataset(ref.path, columns=ref.columns, answer_format=ref.answer_format, limit=limit)
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{key}: the same question id appears twice; is a dataset listed twice?")
    return questions


def evaluation_questions(datasets: list[str | DatasetRef], limit: int | None = None, data_dir: str | None = None) -> list[Question]:
    """The questions an evaluation runs on (its ``datasets``, test split, first ``limit`` of each): what
    ``jobs.evaluate`` samples and what a reader of its output directory (the error analysis) pairs with the samples."""
    return load_refs(datasets, limit, "test", "datasets", data_dir)


def stored_evaluation_questions(eval_dir: str | Path) -> list[Question]:
    """The questions of the evaluation whose output directory is ``eval_dir``, from the ``datasets``, ``limit``
    and ``data_dir`` recorded in its ``config.yaml``: what a reader of its samples (the error analysis, the
    judge) pairs them with."""
    saved = yaml.safe_load((Path(eval_dir) / "config.yaml").read_text()) or {}
    datasets = TypeAdapter(list[str | DatasetRef]).validate_python(saved.get("datasets", ["gsm8k"]))
    return evaluation_questions(datasets, saved.get("limit"), saved.get("data_dir"))


def to_text(value: Any) -> str:
    """A JSON value as text without float artifacts: 5.0 -> "5", 0.5 -> "0.5", lists joined by ", "."""
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(to_text(item) for item in value)
    return str(value).strip()


def _sat_choices(options: str) -> str:
    """``"A) x B) y"`` -> ``"(A) x (B) y"`` (Qwen2.5-Math's SAT format)."""
    options = "(" + options.strip()
    for letter in "BCD":
        options = options.replace(f" {letter}) ", f" ({letter}) ")
    return options


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("line N", row)`` for each non-blank line; DataError on bad JSON or non-objects."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {number}: not valid UTF-8 ({err.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}: line {number}: malformed JSON: {err.msg} (column {err.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            yield f"line {number}", row


def _parquet_rows(path: Path, fields: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("row N", row)`` (1-based); DataError if a needed column is absent."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    for field in fields:
        if field not in schema.names:
            raise DataError(f"{path}: missing column {field!r} (available: {', '.join(schema.names)})")
    for number, row in enumerate(pq.read_table(path, columns=fields).to_pylist(), start=1):
        yield f"row {number}", row


def _read_rows(path: Path, fields: list[str], limit: int | None) -> list[tuple[str, dict[str, Any]]]:
    """The first ``limit`` rows of a JSONL(.gz) or Parquet file, with their locations."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    rows = _parquet_rows(path, fields) if path.suffix == ".parquet" else _jsonl_rows(path)
    out: list[tuple[str, dict[str, Any]]] = []
    for located in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(located)
    if not out and limit != 0:
        raise DataError(f"{path}: empty file (no rows)")
    return out


def _field(path: Path, where: str, row: dict[str, Any], field: str) -> Any:
    if field not in row:
        raise DataError(f"{path}: {where}: missing field {field!r} (available: {', '.join(row)})")
    return row[field]


def _build(
    path: Path,
    rows: list[tuple[str, dict[str, Any]]],
    dataset: str,
    spec: DatasetSpec,
    index_prefix: str,
) -> list[Question]:
    """Turn located rows into Questions per ``spec``; DataError names file, line and field.

    The id is ``<dataset>/<id_field value>`` or, without an id field, ``<index_prefix>/<row index>``.
    """
    extract = ANSWER_FORMATS[spec.answer_format]
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        parts = [to_text(_field(path, where, row, name)) for name in spec.question]
        if spec.period_after_first and len(parts) > 1 and not parts[0].endswith("."):
            parts[0] += "."
        text = " ".join(part for part in parts if part)
        if spec.options is not None:
            text += "\nAnswer Choices: " + _sat_choices(to_text(_field(path, where, row, spec.options)))
        if not text:
            raise DataError(f"{path}: {where}: empty question (field {', '.join(spec.question)})")
        answer = ""
        if spec.answer is not None:
            raw = to_text(_field(path, where, row, spec.answer))
            try:
                answer = extract(raw) if raw else ""
            except DataError as err:
                raise DataError(f"{path}: {where}: field {spec.answer!r}: {err}") from None
        raw_id = _field(path, where, row, spec.id_field) if spec.id_field else None
        if spec.id_field and not to_text(raw_id):
            raise DataError(f"{path}: {where}: empty id in field {spec.id_field!r}")
        qid = f"{dataset}/{to_text(raw_id)}" if spec.id_field else f"{index_prefix}/{index}"
        if qid in seen:
            raise DataError(f"{path}: {where}: duplicate id {qid!r} (first at {seen[qid]})")
        seen[qid] = where
        level = to_text(_field(path, where, row, spec.level)) if spec.level else ""
        kind = to_text(_field(path, where, row, spec.type)) if spec.type else ""
        level_text = spec.level_prefix + level if level else None
        questions.append(Question(qid, dataset, text, answer, level_text, kind or None, str(path)))
    return questions


def load_file(
    path: str | Path,
    *,
    columns: Mapping[str, str],
    dataset: str | None = None,
    answer_format: str = "raw",
    limit: int | None = None,
) -> list[Question]:
    """Load a user JSONL (optionally gzipped) or Parquet file.

    ``columns`` maps schema keys to the file's columns: ``question`` and ``answer`` are required,
    ``id``, ``level`` and ``type`` optional (the id defaults to the row index). ``answer_format``
    says how the gold is taken from the answer column: ``"raw"`` (as is), ``"gsm8k"`` (after
    ``####``) or ``"boxed"`` (last ``\\boxed{}``); ``no_commas``/``no_units`` also work.
    Ids are ``<dataset>/<id or row index>``; ``dataset`` defaults to the file name's stem.
    """
    path = Path(path)
    if answer_format not in ANSWER_FORMATS:
        raise DataError(f"unknown answer_format {answer_format!r} (known: {', '.join(ANSWER_FORMATS)})")
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise DataError(f"unknown column key(s) {', '.join(unknown)} (allowed: {', '.join(COLUMN_KEYS)})")
    for key in ("question", "answer"):
        if key not in columns:
            raise DataError(f"columns must map {key!r} to a column of {path}")
    if not str(path).endswith(FILE_SUFFIXES):
        raise DataError(f"{path}: unsupported file type (supported: {', '.join(FILE_SUFFIXES)})")
    name = dataset or path.name.split(".")[0]
    spec = DatasetSpec(
        files={},
        question=(columns["question"],),
        answer=columns["answer"],
        answer_format=answer_format,
        id_field=columns.get("id"),
        level=columns.get("level"),
        type=columns.get("type"),
    )
    rows = _read_rows(path, list(dict.fromkeys(columns.values())), limit)
    return _build(path, rows, name, spec, index_prefix=name)


def load_dataset(
    name_or_path: str,
    *,
    split: str = "test",
    data_dir: Path | None = None,
    limit: int | None = None,
    columns: Mapping[str, str] | None = None,
    answer_format: str = "raw",
    instances: int | None = None,
    seed: int = 0,
) -> list[Question]:
    """Load a registry dataset by name, or a user file by path (then see :func:`load_file`).

    ``split`` picks the registry file; ``limit`` keeps the first N rows in file order. For a user
    file, ``columns`` defaults to ``{"question": "question", "answer": "answer"}``. The generated
    GSM-Symbolic datasets (``gsm_symbolic``, ``_p1``, ``_p2``, ``_original``) take ``instances`` per
    template and ``seed``, and ``limit`` counts templates (see ``lib.gsm_symbolic.load_questions``).
    """
    from lib import gsm_symbolic

    if name_or_path in gsm_symbolic.DATASETS:
        return gsm_symbolic.load_questions(name_or_path, split=split, data_dir=data_dir, limit=limit,
                                           instances=instances, seed=seed)
    if instances is not None:
        raise DataError(f"instances applies to the generated GSM-Symbolic datasets, not to {name_or_path!r}")
    if name_or_path in DATASETS:
        if columns is not None:
            raise DataError(f"columns applies to user files, not to the registry dataset {name_or_path!r}")
        spec = DATASETS[name_or_path]
        if split not in spec.files:
            raise DataError(
                f"dataset {name_or_path!r} has no split {split!r} (available: {', '.join(sorted(spec.files))})"
            )
        path = resolve_data_file(spec.files[split], data_dir)
        rows = _read_rows(path, [], limit)
        return _build(path, rows, name_or_path, spec, index_prefix=f"{name_or_path}/{split}")
    if not any(char in name_or_path for char in (".", "/", os.sep)):  # registry names are bare words
        raise DataError(f"unknown dataset {name_or_path!r} (known: {', '.join(dataset_names())})")
    return load_file(
        name_or_path,
        columns=columns if columns is not None else {"question": "question", "answer": "answer"},
        answer_format=answer_format,
        limit=limit,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m lib.data stage DEST``: copy the registry datasets to DEST (default ``$MATHRAY_HOME/data``)."""
    import argparse

    from lib.models import mathray_home

    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="copy every registry file to DEST (e.g. shared storage all nodes mount)")
    stage.add_argument("dest", nargs="?", default=None, help="default: $MATHRAY_HOME/data")
    stage.add_argument("--source", default=None, help="default: the first place data is found (see data_dir_candidates)")
    sub.add_parser("where", help="print the places data is looked for, in order")
    args = parser.parse_args(argv)
    try:
        if args.command == "where":
            for i, (where, directory) in enumerate(data_dir_candidates(), 1):
                found = "found" if (directory / DATASETS["gsm8k"].files["test"]).is_file() else "missing"
                print(f"{i}. {directory}  ({where}; gsm8k/test.jsonl {found})")
            return
        dest, copied = stage_data(args.dest or mathray_home() / "data", args.source)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    files = sum(len(spec.files) for spec in DATASETS.values())
    print(f"staged {files} files in {dest} ({copied} copied); jobs find them with {DATA_DIR_ENV}={dest} or data_dir={dest}")


if __name__ == "__main__":
    main()
