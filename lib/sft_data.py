"""(question, solution) pairs for SFT: the synthesis job's dataset, GSM8K / MATH train (the paper's
"real data" baseline, solutions rewritten to end in ``\\boxed{}`` like the synthetic ones), or any
JSONL/Parquet file with a column mapping. Bad input raises ``DataError`` naming the file, row and field."""

from __future__ import annotations

import re
from pathlib import Path

from lib.data import DATASETS, DataError, _read_rows, resolve_data_file
from lib.schemas import SFTPair

_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_solution(answer: str) -> str:
    """GSM8K's reasoning without calculator annotations, ending in ``The answer is \\boxed{X}.``"""
    if "####" not in answer:
        raise DataError("no '####' in GSM8K answer")
    body, final = answer.rsplit("####", 1)
    return _CALCULATOR.sub("", body).strip() + f"\nThe answer is \\boxed{{{final.strip().replace(',', '')}}}."


def load_pairs(source: str, split: str = "train", columns: dict[str, str] | None = None,
               limit: int | None = None) -> list[SFTPair]:
    """(id, question, solution) rows (``lib.schemas.SFTPair``) from ``source``: ``gsm8k`` / ``math`` (registry),
    a synthesis output directory (its ``data/*.parquet``, ``lib.schemas.SFT_SCHEMA``), or a JSONL/Parquet file
    (``columns`` maps question/solution/id)."""
    if source in ("gsm8k", "math"):
        spec = DATASETS[source]
        if split not in spec.files:
            raise DataError(f"dataset {source!r} has no split {split!r} (available: {', '.join(sorted(spec.files))})")
        path = resolve_data_file(spec.files[split])
        rows = _read_rows(path, [], limit)
        out = []
        for i, (where, row) in enumerate(rows):
            try:
                if source == "gsm8k":
                    out.append(SFTPair(f"gsm8k/{split}/{i}", row["question"], gsm8k_solution(row["answer"])))
                else:
                    out.append(SFTPair(row.get("unique_id") or f"math/{split}/{i}", row["problem"], row["solution"]))
            except (KeyError, DataError) as exc:
                raise DataError(f"{path}: {where}: {exc}") from None
        return out
    path = Path(source)
    files = sorted((path / "data").glob("part-*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"{source}: neither a registry dataset (gsm8k, math), a synthesis output directory "
                        "with data/part-*.parquet, nor a file")
    cols = {"id": "id", "question": "question", "solution": "solution", **(columns or {})}
    out = []
    for f in files:
        for where, row in _read_rows(f, [cols["question"], cols["solution"]] if f.suffix == ".parquet" else [], None):
            for key in ("question", "solution"):
                if not isinstance(row.get(cols[key]), str) or not row[cols[key]].strip():
                    raise DataError(f"{f}: {where}: field {cols[key]!r} ({key}) is missing or empty")
            out.append(SFTPair(str(row.get(cols["id"]) or f"{f.stem}/{where.split()[-1]}"), row[cols["question"]],
                               row[cols["solution"]]))
            if limit is not None and len(out) >= limit:
                return out
    return out
