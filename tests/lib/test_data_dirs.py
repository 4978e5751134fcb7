"""Where registry datasets are found: data_dir, $MATHRAY_DATA_DIR, the copy shipped with a Ray job,
../shared/data beside the checkout, $MATHRAY_HOME/data; `python -m lib.data stage`; a job whose data is
nowhere fails before any work, naming every place it looked."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lib.data
from lib.data import DATASETS, DataError, data_dir_candidates, load_dataset, resolve_data_file, stage_data

REPO = Path(__file__).resolve().parents[2]


def _gsm8k(root: Path, question: str) -> Path:
    path = root / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"question": question, "answer": "x\n#### 1"}) + "\n")
    return path


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every candidate place in a temporary directory, all empty."""
    env, checkout, home = tmp_path / "env", tmp_path / "checkout_shared_data", tmp_path / "home"
    monkeypatch.setenv("MATHRAY_DATA_DIR", str(env))
    monkeypatch.setenv("MATHRAY_HOME", str(home))
    monkeypatch.setattr(lib.data, "CHECKOUT_DATA_DIR", checkout)
    return {"env": env, "checkout": checkout, "home": home / "data", "tmp": tmp_path}


def test_missing_everywhere_names_every_place_in_order(places):
    """The error lists each full path tried, numbered in search order, with how to fix it."""
    with pytest.raises(DataError) as err:
        resolve_data_file("gsm8k/test.jsonl")
    lines = str(err.value).splitlines()
    assert lines[:4] == [
        "file not found: gsm8k/test.jsonl; looked in:",
        f"  1. {places['env'] / 'gsm8k/test.jsonl'}  ($MATHRAY_DATA_DIR)",
        f"  2. {places['checkout'] / 'gsm8k/test.jsonl'}  (../shared/data beside the checkout)",
        f"  3. {places['home'] / 'gsm8k/test.jsonl'}  ($MATHRAY_HOME/data)",
    ]
    assert "python -m lib.data stage DEST" in lines[4]


def test_first_place_holding_the_file_wins(places):
    """$MATHRAY_DATA_DIR before the checkout's copy before $MATHRAY_HOME/data, file by file."""
    _gsm8k(places["home"], "home")
    assert load_dataset("gsm8k")[0].question == "home"
    _gsm8k(places["checkout"], "checkout")
    assert load_dataset("gsm8k")[0].question == "checkout"
    _gsm8k(places["env"], "env")
    assert load_dataset("gsm8k")[0].question == "env"


def test_explicit_data_dir_is_the_only_place(places):
    """data_dir= (a config key) is looked at alone: no silent fallback to another copy."""
    _gsm8k(places["env"], "env")
    with pytest.raises(DataError, match=r"looked in:\n  1\. .*/elsewhere/gsm8k/test.jsonl  \(data_dir\)\n[^ ]"):
        load_dataset("gsm8k", data_dir=places["tmp"] / "elsewhere")


def test_copy_shipped_with_a_ray_job_is_found(places, monkeypatch):
    """cluster/runtime_env.yaml ships ../shared/data as py_modules; Ray puts its package dir on sys.path."""
    pkg = places["tmp"] / "runtime_resources" / "py_modules_files" / "_ray_pkg_abc"
    _gsm8k(pkg / "data", "shipped")
    monkeypatch.setattr(sys, "path", [str(pkg)] + sys.path)
    assert [w for w, _ in data_dir_candidates()][:2] == ["$MATHRAY_DATA_DIR", "shipped with the Ray job (runtime_env py_modules)"]
    assert load_dataset("gsm8k")[0].question == "shipped"


def test_stage_copies_every_registry_file_once(tmp_path):
    """`stage` copies every file of the registry with its layout; a rerun copies nothing; jobs read the copy."""
    dest, copied = stage_data(tmp_path / "staged")
    files = sorted({f for spec in DATASETS.values() for f in spec.files.values()})
    assert copied == len(files)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == files
    assert stage_data(dest) == (dest, 0)
    assert load_dataset("svamp", data_dir=dest, limit=2)[1].source == str(dest / "svamp" / "test.jsonl")


def test_stage_command_line(tmp_path):
    """`python -m lib.data stage DEST` prints where the data went and how jobs find it."""
    out = subprocess.run([sys.executable, "-m", "lib.data", "stage", str(tmp_path / "d")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"MATHRAY_DATA_DIR={tmp_path / 'd'}" in out.stdout
    assert (tmp_path / "d" / "gsm8k" / "train.jsonl").is_file()


def test_evaluate_without_data_fails_before_any_work(tmp_path):
    """The evaluation job stops at config load (exit 2, no output directory) naming the place it looked."""
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.evaluate", "--config", "jobs/configs/evaluate_tiny.yaml",
           f"data_dir={tmp_path / 'nodata'}", f"output_dir={out_dir}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"1. {tmp_path / 'nodata' / 'gsm8k' / 'test.jsonl'}  (data_dir)" in out.stderr
    assert not out_dir.exists()


def test_train_sft_without_data_fails_before_ray_starts(places, tmp_path, monkeypatch):
    """The SFT job stops before Ray starts (and before its output directory exists), naming every place."""
    import jobs.train_sft
    from lib.config import ConfigError

    def no_ray():
        raise AssertionError("Ray was started before the data check")

    monkeypatch.setattr(jobs.train_sft, "init_ray", no_ray)

    out_dir = tmp_path / "sft"
    with pytest.raises(ConfigError) as err:
        jobs.train_sft.main(["--config", "jobs/configs/train_sft_tiny.yaml", f"output_dir={out_dir}"])
    assert str(err.value).startswith("data: file not found: gsm8k/train.jsonl; looked in:\n")
    assert f"3. {places['home'] / 'gsm8k/train.jsonl'}  ($MATHRAY_HOME/data)" in str(err.value)
    assert not out_dir.exists()
