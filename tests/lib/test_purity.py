"""lib/ stays pure: importing every module pulls in neither Ray, vLLM nor DeepSpeed."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import lib

REPO = Path(__file__).resolve().parents[2]


def test_lib_imports_without_ray_vllm_deepspeed():
    modules = [f"lib.{m.name}" for m in pkgutil.iter_modules(lib.__path__)]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(n for n in ('ray', 'vllm', 'deepspeed') if n in sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(modules) >= 10
