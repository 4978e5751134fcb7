"""The import graph of jobs/: no job imports another job (the pipeline and the benchmarks compose jobs and
may), no job reaches into Serve's internals (the pipeline gets its teacher from serve.teacher_endpoint), and
shared code (dataset references, Ray start-up) comes from lib."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__")
COMPOSERS = {"pipeline"} | {j for j in JOBS if j.startswith("bench_")}


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` statement anywhere in the file names (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "jobs":
                names |= {f"jobs.{a.name}" for a in node.names}
    return names


def test_the_jobs_are_the_expected_modules():
    """The list below is what the other tests iterate over: a new job is checked too."""
    assert {"evaluate", "synthesize", "train_sft", "analyze_errors", "pipeline"} <= set(JOBS)


@pytest.mark.parametrize("job", sorted(set(JOBS) - COMPOSERS))
def test_a_job_imports_no_other_job(job):
    imported = imported_modules(REPO / "jobs" / f"{job}.py")
    assert not {m for m in imported if m == "jobs" or m.startswith("jobs.")}, sorted(imported)


@pytest.mark.parametrize("job", sorted(set(JOBS) - {"bench_serve"}))
def test_no_job_imports_serve_internals(job):
    """Only serve.teacher_endpoint is for jobs (bench_serve measures the app itself and builds it)."""
    serve = {m for m in imported_modules(REPO / "jobs" / f"{job}.py") if m == "serve" or m.startswith("serve.")}
    assert serve <= {"serve.teacher_endpoint"}, sorted(serve)


def test_pipeline_import_loads_neither_serve_app_nor_ray():
    """Importing the pipeline (and through it every job) pulls in no Serve app, Ray or vLLM."""
    code = ("import sys, jobs.pipeline\n"
            "print(sorted(m for m in ('serve.app', 'serve.teacher_endpoint', 'ray', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
