"""The README's `ray job submit` lines, for real: a Ray head with its dashboard on 127.0.0.1 and token auth, a
second node on the same machine, a copy of the checkout (its git files only, ../shared beside it), the README's
exact command lines for evaluate_tiny and train_sft_tiny (made smaller with appended overrides), SUCCEEDED
through the job API, exact row counts in the outputs. The evaluation is also the suite's check of the real
embedded default model's answers: every stored verdict is what lib.grading.grade says of the stored text (one
engine start for both). Only the processes this test started are stopped."""

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from lib.grading import grade
from lib.openai_server import free_port

REPO = Path(__file__).resolve().parents[2]
SUBMIT = re.compile(r"^ray job submit --working-dir \. --runtime-env cluster/runtime_env\.yaml -- "
                    r"python -m jobs\.(\w+) --config jobs/configs/(\w+)\.yaml output_dir=\S+$", re.M)


def readme_submit_lines() -> dict[str, str]:
    """config name -> the README's one-line `ray job submit` for it, without its output_dir."""
    lines = {}
    for match in SUBMIT.finditer((REPO / "README.md").read_text()):
        lines[match.group(2)] = match.group(0).rsplit(" output_dir=", 1)[0]
    return lines


def copy_checkout(dest: Path) -> Path:
    """The repository's git files (committed or not, not ignored) in dest/mathray, ../shared beside it."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    checkout = dest / "mathray"
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, checkout / rel)
    (dest / "shared").symlink_to((REPO.parent / "shared").resolve())
    return checkout


class LocalRay:
    """`ray start --head --block` (+ one `ray start --address --block` node), each in its own process group."""

    def __init__(self, temp_dir: Path, log_dir: Path, env: dict[str, str]):
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.temp_dir, self.log_dir, self.env = temp_dir, log_dir, env
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str) -> None:
        """Each node's dashboard agent on a free port: the default (52365) is taken by any other Ray on this
        machine (the suite's, under `make test`'s other xdist worker), and a head whose agent cannot listen
        refuses every job ("No available agent to submit job")."""
        log = open(self.log_dir / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(["ray", "start", "--block", "--dashboard-agent-listen-port", str(free_port()),
                                            *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def head(self) -> None:
        self.start(["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                    str(self.dashboard_port), "--num-cpus", "2", "--temp-dir", str(self.temp_dir)], "head")

    def worker(self, name: str = "worker") -> None:
        self.start(["--address", f"127.0.0.1:{self.port}", "--num-cpus", "1"], name)

    def second_node(self, token: str, tries: int = 3) -> None:
        """Start the second node and wait until the head lists it alive. Ray gives a starting raylet 30 s to
        register with the GCS (hard-coded in ``ray._private.node``); under the full suite's load one once missed
        it ("The current node timed out during startup") and its `ray start` exited: such a start is tried
        again (worker.log, worker-2.log, ...). A raylet left by a failed start may register later: at least
        two nodes alive is the condition."""
        for attempt in range(1, tries + 1):
            self.worker("worker" if attempt == 1 else f"worker-{attempt}")
            proc, deadline = self.procs[-1], time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if self.alive_nodes(token) >= 2:
                        return
                except (requests.RequestException, KeyError, ValueError):
                    pass
                time.sleep(1)
            if proc.poll() is None:
                raise AssertionError("timed out after 120 s waiting for the second node")
        raise AssertionError(f"the second node's `ray start` failed {tries} times (worker*.log)")

    def get(self, path: str, token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.address + path, headers=headers, timeout=10)

    def alive_nodes(self, token: str) -> int:
        nodes = self.get("/api/v0/nodes", token).json()["data"]["result"]["result"]
        return sum(n["state"] == "ALIVE" for n in nodes)

    def processes(self) -> list[int]:
        """Every process of this cluster, found by the environment they all inherit from `ray start` (this
        test's own RAY_AUTH_TOKEN): Ray's workers run in sessions of their own, outside the groups started here."""
        marker = f"RAY_AUTH_TOKEN={self.env['RAY_AUTH_TOKEN']}".encode()
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(int(pid))
            except OSError:  # gone, or not ours to read
                pass
        return found

    def stop(self) -> None:
        """SIGINT to each `ray start --block` (it stops what it started), SIGKILL to its group after 30 s,
        then SIGKILL to any process of the cluster still there (a Ray Train controller once outlived `ray
        stop`, orphaned to PID 1 with 400 MB)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group it started, if any
            except ProcessLookupError:
                pass
            proc.wait()
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def submit(line: str, overrides: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    """Run the README's line (shell-split, overrides appended) from the checkout copy; its exit code. A head whose
    job agent has not registered yet refuses with "No available agent to submit job, please try again later"
    (no job is created): that submission is tried again, as the message says, for up to 120 s."""
    argv = shlex.split(line) + overrides
    deadline = time.monotonic() + 120
    while True:
        with open(log, "w") as out:
            code = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600).returncode
        if code == 0 or "No available agent to submit job" not in log.read_text() or time.monotonic() > deadline:
            return code
        time.sleep(3)


@pytest.mark.slow
def test_readme_ray_job_submit_lines_succeed_on_a_local_two_node_cluster(tmp_path):
    """evaluate_tiny and train_sft_tiny submitted with the README's lines run from Ray's copy of a checkout
    (data shipped by cluster/runtime_env.yaml, token auth), SUCCEED, and write exactly the rows asked for.
    SmolLM2's samples on 2 GSM8K questions are real generations (tokens counted, finish reasons from the
    engine) and each stored verdict equals lib.grading.grade on the stored text."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    lines = readme_submit_lines()
    assert sorted(lines) == ["evaluate_tiny", "train_sft_tiny"], lines
    assert (REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl").is_file(), "../shared/data beside the checkout"
    checkout = copy_checkout(tmp_path)
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MATHRAY_DATA_DIR"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the head's `python`
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    ray_tmp = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cluster = LocalRay(ray_tmp, tmp_path, env)
    try:
        cluster.head()
        assert wait_until(lambda: cluster.get("/api/version", token).ok, 120, "the head's dashboard")
        assert cluster.get("/api/version", None).status_code == 401  # no token, no access
        cluster.second_node(token)
        client = JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {token}"})
        submit_env = {**env, "RAY_ADDRESS": cluster.address}

        eval_dir = tmp_path / "out" / "evaluate_tiny"
        code = submit(lines["evaluate_tiny"], ["limit=2", "samples_per_question=4", "max_tokens=128",
                                               f"output_dir={eval_dir}"], checkout, submit_env, tmp_path / "evaluate.log")
        train_dir = tmp_path / "out" / "train_sft_tiny"
        code_train = submit(lines["train_sft_tiny"], ["data.limit=16", "max_steps=2", "checkpoint_every=2",
                                                      f"output_dir={train_dir}"], checkout, submit_env, tmp_path / "train.log")

        jobs = {j.entrypoint.split("--config ")[1].split()[0]: j for j in client.list_jobs()}
        assert {k: (v.status, v.entrypoint.split(" output_dir")[0]) for k, v in jobs.items()} == {
            "jobs/configs/evaluate_tiny.yaml": (JobStatus.SUCCEEDED, lines["evaluate_tiny"].split(" -- ")[1]
                                                + " limit=2 samples_per_question=4 max_tokens=128"),
            "jobs/configs/train_sft_tiny.yaml": (JobStatus.SUCCEEDED, lines["train_sft_tiny"].split(" -- ")[1]
                                                 + " data.limit=16 max_steps=2 checkpoint_every=2"),
        }, ((tmp_path / "evaluate.log").read_text()[-3000:], (tmp_path / "train.log").read_text()[-3000:])
        assert (code, code_train) == (0, 0)

        samples = pq.read_table(eval_dir / "samples").to_pylist()
        assert sorted((r["question_id"], r["sample_idx"]) for r in samples) == [
            (f"gsm8k/test/{q}", i) for q in range(2) for i in range(4)]
        greedy = pq.read_table(eval_dir / "greedy").to_pylist()
        assert len(greedy) == 2
        for row in samples + greedy:
            assert row["num_tokens"] > 0 and row["text"].strip() and row["finish_reason"] in ("stop", "length")
            verdict = grade(row["text"], row["gold"])
            assert (row["status"], row["extracted"]) == (verdict.status, verdict.extracted)
        assert {r["gold"] for r in samples + greedy} == {"18", "3"}
        metrics = json.loads((eval_dir / "metrics.json").read_text())["gsm8k"]
        assert metrics["num_questions"] == 2 and sum(metrics["status_counts"].values()) == 8
        summary = json.loads((train_dir / "summary.json").read_text())
        assert (summary["examples"], summary["final_metrics"]["step"]) == (16, 2)
        assert len((train_dir / "metrics.jsonl").read_text().splitlines()) == 2
        assert (train_dir / "hf" / "config.json").is_file()
    finally:
        cluster.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert all(proc.poll() is not None for proc in cluster.procs)
    wait_until(lambda: not cluster.processes(), 10, "every process of the test's cluster to end")
