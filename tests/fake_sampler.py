"""A stand-in for ``lib.sampling.AsyncVLLMSampler``: same constructor, same rows, scripted texts, no engine.

``engine_kwargs`` (the config's ``engine.extra``) carries ``streams`` (question_id -> one character per
sample_idx: ``c`` correct ``\\boxed{1}``, ``x`` incorrect ``\\boxed{2}`` (the questions' gold is "1"),
``e`` an engine-error row, ``!`` the call raises) and ``log_dir``, where each construction creates a file
``engine-<id>`` and each call appends its requests to ``requests-<id>.jsonl``, so a test counts exactly
how many engines started and what was asked of them. Greedy samples are correct.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from lib.schemas import SAMPLER_COLUMNS


class ScriptedSampler:
    def __init__(self, model: str, prompt: str, settings: Any, engine_kwargs: dict[str, Any], cpu_threads_bind: str = "auto"):
        self.streams = engine_kwargs["streams"]
        self.log_dir = Path(engine_kwargs["log_dir"])
        self.id = uuid.uuid4().hex
        (self.log_dir / f"engine-{self.id}").write_text("")

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        await asyncio.sleep(0.02)  # several calls overlap in the actor, as the engine's do
        out: dict[str, list] = {c: [] for c in SAMPLER_COLUMNS}
        with open(self.log_dir / f"requests-{self.id}.jsonl", "a") as log:
            for i, qid in enumerate(batch["question_id"]):
                kind, indices = batch["kind"][i], [int(x) for x in batch["sample_indices"][i]]
                log.write(json.dumps({"question_id": qid, "kind": kind, "sample_indices": indices}) + "\n")
                for idx in indices:
                    script = "c" if kind == "greedy" else self.streams[qid][idx]
                    if script == "!":
                        raise RuntimeError(f"scripted failure for {qid} sample {idx}")
                    row = {"question_id": qid, "dataset": batch["dataset"][i], "kind": kind, "sample_idx": idx,
                           "gold": batch["gold"][i], "text": "The answer is \\boxed{1}." if script == "c" else "It is \\boxed{2}.",
                           "num_tokens": 7, "finish_reason": "stop", "error": None}
                    if script == "e":
                        row.update(text="", num_tokens=0, finish_reason="error", error="scripted engine error")
                    for c in SAMPLER_COLUMNS:
                        out[c].append(row[c])
        return out


def logged_requests(log_dir: Path) -> list[dict]:
    """Every request the scripted engines received, over all of them."""
    return [json.loads(line) for path in sorted(log_dir.glob("requests-*.jsonl")) for line in path.read_text().splitlines()]
