"""Config loading: unknown keys, bad values and bad overrides are errors that name file, line and key."""

import pytest
from pydantic import Field

from lib.config import ConfigError, StrictModel, load_config


class Inner(StrictModel):
    size: int = Field(1, ge=1)


class Job(StrictModel):
    name: str = "x"
    limit: int | None = None
    inner: Inner = Field(default_factory=Inner)


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    """Overrides win over the file, values are parsed as YAML, nested keys use dots."""
    cfg = load_config(Job, write(tmp_path, "name: a\ninner:\n  size: 2\n"), ["inner.size=5", "limit=null", "name=b"])
    assert (cfg.name, cfg.limit, cfg.inner.size) == ("b", None, 5)


def test_unknown_key_names_file_line_and_key(tmp_path):
    """A typo in a nested key is reported with the file, its line number and the dotted key."""
    path = write(tmp_path, "name: a\ninner:\n  sise: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Job, path)
    assert f"{path}:3: key 'inner.sise'" in str(err.value)


def test_bad_value_names_key(tmp_path):
    """A value that fails validation names the key and the constraint."""
    path = write(tmp_path, "inner:\n  size: 0\n")
    with pytest.raises(ConfigError, match=r"job.yaml:2: key 'inner.size': Input should be greater than or equal to 1"):
        load_config(Job, path)


def test_unknown_override_key_is_an_error(tmp_path):
    """An override of a key the job does not have is rejected (no file line to name)."""
    with pytest.raises(ConfigError, match=r"key 'bogus'"):
        load_config(Job, write(tmp_path, "name: a\n"), ["bogus=1"])


def test_malformed_override_and_missing_file(tmp_path):
    """'limit' without '=' and a missing config file are clear errors."""
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Job, None, ["limit"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, tmp_path / "nope.yaml")


def test_invalid_yaml_names_file(tmp_path):
    """A YAML syntax error names the file."""
    path = write(tmp_path, "name: [a\n")
    with pytest.raises(ConfigError, match="job.yaml: invalid YAML"):
        load_config(Job, path)
