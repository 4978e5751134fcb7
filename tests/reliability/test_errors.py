"""Errors a user can act on: an output_dir that is a file or not writable, and a model path that does not
exist, are config errors naming the key before any work (no model load, no empty output directory); a
full disk is named as such, not buried in a Ray traceback."""

import errno

import pytest

from lib.config import ConfigError
from lib.output_dir import disk_full, prepare_output_dir


def evaluate_error(capsys, *overrides) -> str:
    """What `python -m jobs.evaluate` prints before it exits with 2 (lib.cli.entry: `error: ` + the ConfigError)."""
    from jobs.evaluate import main

    with pytest.raises(ConfigError) as exc:
        main(["limit=1", *overrides])
    return f"error: {exc.value}\n"


def test_evaluate_output_dir_that_is_a_file_or_unwritable(tmp_path, capsys):
    """Both used to end in a traceback (after the tokenizer load for the unwritable one)."""
    afile = tmp_path / "results.txt"
    afile.write_text("not a directory")
    assert evaluate_error(capsys, f"output_dir={afile}") == f"error: output_dir: {afile} exists and is not a directory\n"
    err = evaluate_error(capsys, f"output_dir={afile}/sub")
    assert err.startswith(f"error: output_dir: cannot write to {afile}/sub: ")
    err = evaluate_error(capsys, "output_dir=/proc/self")  # a directory nobody, root included, can write in
    assert err.startswith("error: output_dir: cannot write to /proc/self: ")


@pytest.mark.parametrize("model", ["/no/such/checkpoint", "./no-such-checkpoint", "outputs/sft/no-such/final"])
def test_evaluate_missing_model_path_is_a_config_error_before_work(tmp_path, capsys, model):
    """A model path that does not exist used to fail after a 20 s tokenizer load, leaving an empty output_dir."""
    out = tmp_path / "out"
    err = evaluate_error(capsys, f"model={model}", f"output_dir={out}")
    assert err.startswith(f"error: model: {model} does not exist") and not out.exists()


def test_evaluate_checkpoint_directory_without_config_json(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    err = evaluate_error(capsys, f"model={ckpt}", f"output_dir={tmp_path / 'out'}")
    assert err == f"error: model: {ckpt} has no config.json: not a Hugging Face checkpoint directory\n"


def test_synthesize_output_dir_that_is_a_file(tmp_path):
    from jobs.synthesize import main

    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=rf"^output_dir: {afile} exists and is not a directory$"):
        main([f"output_dir={afile}", "seed_limit=1"])


def test_prepare_output_dir_creates_and_probes(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone


def test_disk_full_is_found_inside_wrapped_and_remote_errors():
    """ENOSPC as the error, as the cause of another, or only as text (a Ray task error carries the remote
    traceback as text): each is recognised; other errors are not."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing a part failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert disk_full(RuntimeError("ray.exceptions.RayTaskError(OSError): ... OSError: [Errno 28] No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied")) and not disk_full(ValueError("x"))
