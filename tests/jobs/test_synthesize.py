"""The synthesis job on local Ray: exact stage counts, cached rerun, SIGKILL + rerun, budget stop, error
fraction (against the loopback stand-in teacher), and the tiny config against vLLM's real server."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.synthesize import main
from lib.data import load_dataset
from lib.teacher import request_key
from tests.fake_teacher import FakeTeacher, synthesis_responder

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]

VOCAB = ("apple train river number garden basket coin ticket marble pencil candle window ladder bottle cookie "
         "bridge rabbit orange blanket hammer lantern pocket violin turtle wagon zebra kettle mirror needle "
         "parrot quilt rocket saddle tablet umbrella vessel whistle yacht anchor barrel cactus dragon").split()


def unique_text(tag: str) -> str:
    rng = random.Random(tag)
    return f"Problem {tag}: " + " ".join(rng.choice(VOCAB) for _ in range(30)) + " ?"


class ScriptedTeacher:
    """Per seed (GSM8K train 0..5) and question index, a planned fate (see the test's docstring)."""

    def __init__(self):
        self.seeds = {q.question.strip(): k for k, q in enumerate(load_dataset("gsm8k", split="train", limit=6))}
        self.test_question = load_dataset("gsm8k", split="test", limit=1)[0].question

    def question(self, k: int, i: int) -> str:
        return {
            (0, 0): unique_text("A"), (0, 1): unique_text("A"),  # exact duplicate
            (1, 0): unique_text("B"), (1, 1): unique_text("B").replace("Problem", "Task"),  # near duplicate
            (2, 0): self.test_question, (2, 1): unique_text("C"),  # contaminated
            (3, 0): unique_text("D-disagree"), (3, 1): unique_text("x") + " The answer is 5.",  # low agreement, has answer
            (4, 0): unique_text("E-wrong"), (4, 1): unique_text("F"),  # verification says incorrect
            (5, 0): unique_text("G"), (5, 1): unique_text("H-nobox"),  # no boxed answer
        }[(k, i)]

    def __call__(self, messages, seed):
        prompt = messages[-1]["content"]
        if "New problem:" in prompt:
            return "New problem: " + self.question(self.seeds[prompt.split("\n\n")[1].strip()], seed)
        if prompt.startswith("Solve the following"):
            if "D-disagree" in prompt:
                return f"Working through it step by step gives \\boxed{{{seed + 10}}}."
            if "H-nobox" in prompt:
                return "Working through it step by step, the answer is 9."
            return f"Working through it step by step gives \\boxed{{{6 if seed == 3 else 5}}}."
        if "Verdict" in prompt:
            return "Verdict: incorrect" if "E-wrong" in prompt else "All steps check out.\nVerdict: correct"
        raise AssertionError(f"unexpected prompt {prompt[:80]!r}")


def args(teacher, out, *extra):
    return [f"teacher.base_url={teacher.base_url}", f"teacher.model={teacher.model}", f"output_dir={out}",
            "teacher.backoff_base_s=0", *extra]


def data_rows(out):
    return sorted((r["id"], r["question"], r["solution"], r["answer"]) for r in pq.read_table(out / "data").to_pylist())


def test_stage_counts_removals_and_a_cached_rerun(tmp_path):
    """6 seeds x 2 questions x 4 solutions with verification. Planted: an exact and a near duplicate, a
    GSM8K test question, a question whose solutions disagree, one that states its answer, one the teacher
    judges incorrect, one whose 4 agreeing solutions have no boxed answer. 83 requests, of which the exact
    duplicate's 4 solutions and 3 verifications repeat its twin's (sent once, served as cached: 76 sent);
    5 questions x 3 solutions survive. A rerun sends no request and writes the same rows."""
    out = tmp_path / "synth"
    extra = ["seed_limit=6", "stage.questions_per_seed=2", "stage.solutions_per_question=4", "stage.filters.verify=true",
             "dedup.near_threshold=0.7", "teacher.pricing.prompt_usd_per_mtok=1000",
             "teacher.pricing.completion_usd_per_mtok=1000"]
    with FakeTeacher(responder=ScriptedTeacher()) as teacher:
        card = main(args(teacher, out, *extra)).card
        assert len(teacher.log) == 12 + 11 * 4 + 9 * 3 - 4 - 3
        again = main(args(teacher, out, *extra)).card
        assert len(teacher.log) == 76
    counts = {s["stage"]: (s.get("questions"), s.get("solutions")) for s in card["stages"]}
    assert counts == {
        "seeds": (6, None), "questions requested": (12, None), "questions returned": (12, None),
        "questions parsed": (11, None), "solutions returned": (11, 44), "answer agreement >= threshold": (10, 31),
        "format filters": (9, 27), "teacher verification": (8, 24), "exact + near dedup": (6, None),
        "decontamination": (5, 15), "final dataset": (5, 15),
    }
    assert card["removals"] == {
        "questions": {"low_agreement": 1, "no_solution_kept": 2, "question_rejected:has_answer": 1},
        "solutions_format": {"no_boxed": 4}, "solutions_verification": {"incorrect": 3},
        "duplicates": {"exact": 1, "near": 1}, "contaminated": 1,
    }
    assert card["totals"]["requests"] == 76 and card["totals"]["cached"] == 7 and card["totals"]["failed"] == 0
    assert card["totals"]["retries"] == 0
    contaminated = [json.loads(line) for line in (out / "decontamination.jsonl").read_text().splitlines()]
    assert [(c["question_id"], c["test_id"]) for c in contaminated] == [("gsm8k/train/2/q0", "gsm8k/test/0")]
    rows = pq.read_table(out / "data").to_pylist()
    assert len(rows) == 15 and {r["answer"] for r in rows} == {"5"} and {r["agreement"] for r in rows} == {0.75}
    assert all(r["verified"] is True and r["teacher_model"] == "fake-teacher" and r["verify_prompt"] == "verify_v1" for r in rows)
    assert sorted({r["seed_id"] for r in rows}) == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/4",
                                                     "gsm8k/train/5"]
    assert again["totals"]["requests"] == 0 and again["totals"]["cached"] == 83 and again["cost_this_run_usd"] == 0
    assert again["stages"] == card["stages"] and data_rows(out) == sorted(
        (r["id"], r["question"], r["solution"], r["answer"]) for r in rows)
    assert (out / "data_card.md").read_text().count("| final dataset | 5 | 15 |") == 1


def settled_keys(cache: Path, quiet_s: float = 3.0) -> set[str]:
    """The cache's keys once no process has added one for ``quiet_s`` seconds."""
    keys, since = None, time.monotonic()
    while True:
        db = sqlite3.connect(cache)
        now = {k for (k,) in db.execute("SELECT key FROM responses")}
        db.close()
        if now != keys:
            keys, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return keys
        time.sleep(0.5)


def logged_key(body):
    params = {k: body[k] for k in ("temperature", "top_p", "max_tokens", "seed")}
    return request_key(body["model"], body["messages"], params, body["seed"])


def test_sigkill_mid_run_then_rerun_sends_no_succeeded_request_again(tmp_path):
    """Kill the job (SIGKILL, whole process group) once 20 responses are cached; the rerun requests exactly
    the keys not in the cache, none twice, and the rows equal an uninterrupted run's."""
    out, clean = tmp_path / "killed", tmp_path / "clean"
    extra = ["seed_limit=16", "stage.questions_per_seed=1", "stage.solutions_per_question=4", "teacher.max_concurrency=4",
             "resources.seeds_per_batch=2"]
    with FakeTeacher(responder=synthesis_responder, delay_s=0.15) as teacher:
        cmd = [sys.executable, "-m", "jobs.synthesize", *args(teacher, out, *extra)]
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache, cached = out / "cache.sqlite", set()
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline and len(cached) < 20:
                assert proc.poll() is None, "the run finished before it could be killed"
                time.sleep(0.2)
                if cache.exists():
                    db = sqlite3.connect(cache)
                    cached = {k for (k,) in db.execute("SELECT key FROM responses")}
                    db.close()
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cached = settled_keys(cache)  # Ray's worker processes outlive the driver by a moment
        assert 20 <= len(cached) < 80, f"killed too late: {len(cached)} of 80 responses cached"
        first_run = len(teacher.log)
        card = main(args(teacher, out, *extra)).card
        rerun_keys = [logged_key(entry["body"]) for entry in teacher.log[first_run:]]
        assert not set(rerun_keys) & cached, "a request that had succeeded was sent again"
        assert len(rerun_keys) == len(set(rerun_keys)) == 80 - len(cached)
        main(args(teacher, clean, *extra))
    assert card["totals"]["cached"] == len(cached) and card["totals"]["requests"] == 80 - len(cached)
    assert data_rows(out) == data_rows(clean) and len(data_rows(out)) > 0


def test_budget_stops_cleanly_and_a_larger_budget_finishes_from_the_cache(tmp_path):
    """Each request costs $0.001 per word; a $0.40 budget stops the job with what was done saved and the
    spend under the budget; rerun with $100 it finishes, paying only for requests not yet made."""
    out = tmp_path / "budget"
    extra = ["seed_limit=6", "stage.questions_per_seed=1", "stage.solutions_per_question=4", "teacher.max_tokens=60",
             "stage.question_max_tokens=60", "teacher.max_concurrency=2", "resources.seeds_per_batch=1",
             "teacher.pricing.prompt_usd_per_mtok=1000", "teacher.pricing.completion_usd_per_mtok=1000"]
    with FakeTeacher() as teacher:
        card = main(args(teacher, out, "budget_usd=0.4", *extra)).card
        first = len(teacher.log)
        assert card["stopped_by_budget"] and 0 < first < 30
        assert card["totals"]["cost"] <= 0.4 and card["totals"]["budget_refused"] > 0
        assert any("stopped by budget_usd=0.4" in n for n in card["notes"])
        done = json.loads((out / "summary.json").read_text())
        assert done["stopped_by_budget"] is True
        full = main(args(teacher, out, "budget_usd=100", *extra)).card
        assert len(teacher.log) == 30
    assert not full["stopped_by_budget"] and full["totals"]["requests"] == 30 - first
    assert full["stages"][-1]["questions"] == 6


def test_too_many_failed_requests_fail_the_job_with_the_output_saved(tmp_path):
    """Every solution request returns 500: above max_error_fraction the job raises, naming the counts,
    after writing the question rows (with their errors) and the data card."""
    out = tmp_path / "errors"
    fail_solutions = lambda n, body: "500" if body["messages"][-1]["content"].startswith("Solve") else None  # noqa: E731
    with FakeTeacher(fault_fn=fail_solutions) as teacher:
        with pytest.raises(RuntimeError, match=r"of \d+ teacher requests failed .*max_error_fraction 5.0%"):
            main(args(teacher, out, "seed_limit=4", "stage.questions_per_seed=1", "teacher.max_attempts=2",
                      "min_requests_for_error_check=10"))
    card = json.loads((out / "data_card.json").read_text())
    assert card["rows"] == 0 and card["totals"]["failed"] >= 4 and card["error_fraction"] > 0.05
    solution = card["usage"]["solution"]  # max_attempts=2: each failed solution was sent twice, one retry
    assert solution["requests"] == 2 * solution["failed"] and solution["retries"] == solution["failed"]
    assert card["usage"]["question"]["retries"] == 0 and card["totals"]["retries"] == solution["failed"]
    rows = pq.read_table(out / "questions").to_pylist()
    assert rows and all("solution 0: 500" in json.loads(r["errors_json"])[0] for r in rows)


def test_bad_config_fails_before_work(tmp_path):
    from lib.config import ConfigError
    from lib.teacher import TeacherError

    with pytest.raises(ConfigError, match="stage.questions_per_seed"):
        main([f"output_dir={tmp_path}", "stage.questions_per_seed=0"])
    with pytest.raises(TeacherError, match="cannot connect"):
        main([f"output_dir={tmp_path}", "teacher.base_url=http://127.0.0.1:9/v1", "seed_limit=1"])


def test_tiny_config_with_vllms_server_then_cached_rerun(tmp_path):
    """The shipped tiny config end to end with the default model behind vLLM's OpenAI server: a dataset
    and a data card whose counts add up; the rerun sends no request. Shorter answers than the config's (what
    is checked is the bookkeeping, which does not depend on their length). The rerun's teacher is the loopback
    stand-in under the served model's name (the cache is keyed by model name and request, not by address): it
    proves no request was sent from its own log, and spares the suite a second vLLM server start."""
    out = tmp_path / "tiny"
    sizes = ["seed_limit=1", "teacher.max_tokens=160", "stage.filters.verify_max_tokens=96"]
    card = main(["--config", "jobs/configs/synthesize_tiny.yaml", f"output_dir={out}", *sizes]).card
    shown = json.dumps({k: card[k] for k in ("stages", "removals", "usage", "totals", "rows")}, indent=1)
    stages = {s["stage"]: s for s in card["stages"]}
    assert stages["seeds"]["questions"] == 1 and stages["questions requested"]["questions"] == 2, shown
    usage = card["usage"]
    # A dropped keep-alive connection is retried; `retries` counts those extra attempts exactly.
    assert usage["question"]["requests"] - usage["question"]["retries"] == 2 and usage["question"]["failed"] == 0, shown
    assert usage["solution"]["requests"] - usage["solution"]["retries"] == 4 * stages["questions parsed"]["questions"], shown
    assert pq.read_table(out / "data").num_rows == card["rows"] == stages["final dataset"]["solutions"], shown
    assert (out / "data_card.md").exists() and card["totals"]["cost"] > 0, shown
    with FakeTeacher(model="smollm2-teacher") as stand_in:
        again = main(["--config", "jobs/configs/synthesize_tiny.yaml", f"output_dir={out}", *sizes, "local_server=null",
                      f"teacher.base_url={stand_in.base_url}", "teacher.model=smollm2-teacher"]).card
    assert stand_in.log == []
    shown_again = json.dumps({k: again[k] for k in ("stages", "removals", "usage", "totals", "rows")}, indent=1)
    t = card["totals"]
    assert again["totals"]["requests"] == 0, shown_again
    assert again["totals"]["cached"] == t["requests"] - t["retries"] + t["cached"], f"first run: {shown}\nrerun: {shown_again}"
    assert again["stages"] == card["stages"], f"first run: {shown}\nrerun: {shown_again}"
