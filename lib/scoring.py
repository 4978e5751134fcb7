"""Per-sample judge scores for the selection rules that need them (``lib.selection.NEEDS_SCORES``).

A judge (any OpenAI-compatible endpoint through ``lib.teacher``, or the project's vLLM model behind vLLM's
OpenAI server) reads each stored sample with its question and replies ``Score: X``, X in [0, 1] (how likely
the sample's final answer is correct; no reference answer is shown). :func:`parse_score` reads X.

Layout, beside ``samples/`` in an evaluation's output directory::

    scores/part-*.parquet   one row per judged (question_id, sample_idx): SCORE_SCHEMA
    scores/cache.sqlite     every successful judge response (lib.teacher.RequestCache)
    scores/config.yaml      the score job's resolved config;  scores/summary.json  its counts

Row ``status``: ``scored`` (score in [0, 1]); ``unparsed`` (the judge answered without a score: score null,
counts 0 in the rules); ``no_answer`` (the sample has no extracted answer, so it joins no group: no request
is sent, score null); ``failed`` / ``budget`` (the request failed after retries / the budget refused it:
score null, the error kept). ``scored``, ``unparsed`` and ``no_answer`` are done; a rerun judges the other
pairs again (the new row wins on read), so a failed request is recorded and counted, never lost. Parts are
written atomically (temporary name, fsync, rename), so a killed run leaves only whole parts; the request
cache makes a rerun send no request that already succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lib.config import ConfigError
from lib.progress import setup_logging
from lib.selection import NEEDS_SCORES
from lib.synthesis_stage import RemoteGovernor, Usage
from lib.teacher import BUDGET_EXHAUSTED, RequestCache, TeacherClient, TeacherSettings

log = logging.getLogger("mathray.scoring")

SCORES_DIR = "scores"
DONE = ("scored", "unparsed", "no_answer")  # statuses a rerun does not judge again
STATUSES = (*DONE, "failed", "budget")
SCORE_SCHEMA = pa.schema([
    ("question_id", pa.string()),
    ("sample_idx", pa.int64()),
    ("score", pa.float64()),
    ("status", pa.string()),
    ("judge_text", pa.string()),
    ("error", pa.string()),
    ("judge_model", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost", pa.float64()),
    ("cached", pa.bool_()),
    ("attempts", pa.int64()),
])

JUDGE_PROMPT = """You are checking a student's solution to a math problem. No reference answer is given: check the \
reasoning and the arithmetic yourself.

Problem:
{question}

Solution:
{response}

How likely is the solution's final answer to be correct? End your reply with one line "Score: X", where X is a \
number from 0 (certainly wrong) to 1 (certainly correct)."""

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*([0-9]*\.?[0-9]+)", re.IGNORECASE)


def judge_messages(question: str, response: str) -> list[dict[str, str]]:
    """The judge's chat messages for one sample."""
    return [{"role": "user", "content": JUDGE_PROMPT.format(question=question, response=response)}]


def parse_score(text: str | None) -> float | None:
    """X of the judge reply's last ``Score: X`` (case-insensitive; ``=`` and markdown bold accepted) when
    0 <= X <= 1; None when there is none or it is out of range (never raises)."""
    matches = _SCORE.findall(text or "")
    if not matches:
        return None
    value = float(matches[-1])
    return value if 0.0 <= value <= 1.0 else None


# -------------------------------------------------------------------------------------------- store


class ScoreStore:
    """The ``scores/`` parts of one evaluation output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.directory = self.root / SCORES_DIR

    def parts(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet"))

    def clean(self) -> int:
        """Remove the temporary files a killed run left; returns how many."""
        stray = list(self.directory.glob("*.tmp"))
        for path in stray:
            path.unlink(missing_ok=True)
        return len(stray)

    def write(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write ``rows`` (SCORE_SCHEMA columns) as one part, atomically and durably; None for no rows."""
        if not rows:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"part-{uuid.uuid4().hex}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=SCORE_SCHEMA), tmp)
        for path in (tmp, self.directory):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
        return final

    def read(self) -> pa.Table:
        """One row per (question_id, sample_idx): its first done row (:data:`DONE`), else its latest row."""
        parts = self.parts()
        if not parts:
            return SCORE_SCHEMA.empty_table()
        rows = pa.concat_tables(pq.read_table(p).cast(SCORE_SCHEMA) for p in parts).to_pylist()
        best: dict[tuple[str, int], dict] = {}
        for row in rows:
            key = (row["question_id"], row["sample_idx"])
            if key not in best or (best[key]["status"] not in DONE and row["status"] in DONE):
                best[key] = row
        return pa.Table.from_pylist(list(best.values()), schema=SCORE_SCHEMA)

    def done(self) -> set[tuple[str, int]]:
        """(question_id, sample_idx) pairs a rerun does not judge again."""
        table = self.read()
        return {(q, i) for q, i, s in zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist(),
                                          table.column("status").to_pylist()) if s in DONE}

    def status_counts(self) -> dict[str, int]:
        counts = Counter(self.read().column("status").to_pylist())
        return {s: counts.get(s, 0) for s in STATUSES}


def pending_rows(samples: pa.Table, questions: dict[str, str], done: set[tuple[str, int]],
                 samples_per_question: int | None = None) -> list[dict[str, Any]]:
    """The judge's input rows: stored samples (``question_id``, ``sample_idx``, ``text``, ``extracted``) not
    yet done, with their question text (``questions``: id -> text), sample_idx below ``samples_per_question``."""
    rows = []
    for row in samples.select(["question_id", "sample_idx", "text", "extracted"]).to_pylist():
        if (row["question_id"], row["sample_idx"]) in done:
            continue
        if samples_per_question is not None and row["sample_idx"] >= samples_per_question:
            continue
        rows.append({**row, "question": questions[row["question_id"]]})
    return sorted(rows, key=lambda r: (r["question_id"], r["sample_idx"]))


def score_lists(root: str | Path, question_ids: list[str], samples_per_question: int) -> dict[str, list[float | None]]:
    """question_id -> the scores of its samples 0..n-1 (None: no score, e.g. a failed request), for
    ``lib.selection``'s score rules. ValueError when a sample has no score row (the score job has not run, or
    was stopped): the rule would otherwise measure unjudged samples as 0."""
    table = ScoreStore(root).read()
    by_pair = dict(zip(zip(table.column("question_id").to_pylist(), table.column("sample_idx").to_pylist()),
                       table.column("score").to_pylist()))
    missing = [(q, i) for q in question_ids for i in range(samples_per_question) if (q, i) not in by_pair]
    if missing:
        raise ValueError(f"{len(missing)} of {len(question_ids) * samples_per_question} samples in {root} have no judge "
                         f"score (first: {missing[0]}); run python -m jobs.score output_dir={root}")
    return {q: [by_pair[(q, i)] for i in range(samples_per_question)] for q in question_ids}


def check_score_source(selection: list[str], output_dir: str | Path) -> None:
    """Before work: a selection naming a score rule needs ``scores/`` in ``output_dir`` (ConfigError naming the key)."""
    wanted = sorted(NEEDS_SCORES.intersection(selection))
    if wanted and not ScoreStore(output_dir).parts():
        raise ConfigError(f"selection: {wanted} need per-sample judge scores and {Path(output_dir) / SCORES_DIR} holds "
                          "none; evaluate without them, run python -m jobs.score output_dir=... , then stage=metrics")


# -------------------------------------------------------------------------------------------- stage


class JudgeAndStore:
    """Ray Data stage (async): a batch of :func:`pending_rows` -> judge each sample, store one part, return
    one summary row of counts (the scores never travel back to the driver)."""

    def __init__(self, judge: dict, output_dir: str, cache_path: str, governor: Any = None, api_key: Any = None,
                 seed: int = 0):
        setup_logging()
        for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.settings = TeacherSettings.model_validate(judge)
        self.store = ScoreStore(output_dir)
        self.cache = RequestCache(cache_path)
        self.governor = RemoteGovernor(governor) if hasattr(getattr(governor, "acquire", None), "remote") else governor
        self.api_key, self.seed = api_key, seed
        self.client: TeacherClient | None = None

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        if self.client is None:  # created in the event loop that runs the requests
            self.client = TeacherClient(self.settings, governor=self.governor, cache=self.cache, seed=self.seed,
                                        api_key=self.api_key)
        n = len(batch["question_id"])
        rows = await asyncio.gather(*[self.judge_one({c: batch[c][i] for c in batch}) for i in range(n)])
        self.store.write([r for r, _ in rows])
        usage = Usage()
        for _, completion in rows:
            if completion is not None:
                usage.add(completion)
        counts = Counter(r["status"] for r, _ in rows)
        return {"num_rows": [n], **{s: [counts.get(s, 0)] for s in STATUSES},
                **{k: [v] for k, v in vars(usage).items()}}

    async def judge_one(self, row: dict[str, Any]):
        out = {"question_id": str(row["question_id"]), "sample_idx": int(row["sample_idx"]), "score": None,
               "judge_text": None, "error": None, "judge_model": self.settings.model, "prompt_tokens": 0,
               "completion_tokens": 0, "cost": 0.0, "cached": False, "attempts": 0}
        if row["extracted"] is None:
            return {**out, "status": "no_answer"}, None
        c = await self.client.complete(judge_messages(str(row["question"]), str(row["text"])),
                                       sample_index=int(row["sample_idx"]), stage="judge")
        out.update(judge_text=c.text or None, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                   cost=c.cost, cached=c.cached, attempts=c.attempts)
        if c.error is not None:
            return {**out, "status": "budget" if c.error == BUDGET_EXHAUSTED else "failed", "error": c.error}, c
        score = parse_score(c.text)
        return {**out, "score": score, "status": "unparsed" if score is None else "scored"}, c
