"""lib.ray_runtime: the filter that keeps Ray Train's placement-group-cleaner warning (one a second per training
run on a local Ray without a dashboard) out of the jobs' logs, checked against the installed Ray's own source
and its own log deduplicator, and set by every job's ``__main__`` before Ray is imported."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from lib.ray_runtime import CLEANER_NOISE, SKIP_REGEX_VAR, quiet_known_noise

REPO = Path(__file__).resolve().parents[2]


def installed_cleaner_warnings() -> list[str]:
    """The text of every ``logger.warning`` in the installed Ray's PlacementGroupCleaner (an f-string's
    literal parts only), read from its source without importing Ray."""
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    source = ray_dir / "train/v2/_internal/execution/controller/placement_group_cleaner.py"
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "warning"
                and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append(arg.value)
            elif isinstance(arg, ast.JoinedStr):
                found.append("".join(v.value for v in arg.values if isinstance(v, ast.Constant)))
    return found


def test_the_pattern_matches_the_installed_cleaners_polling_warning_and_no_other():
    """The one warning the cleaner repeats every second is dropped; its warnings about a dead controller or a
    failed clean-up still reach the log."""
    env: dict[str, str] = {}
    quiet_known_noise(env)
    pattern = re.compile(env[SKIP_REGEX_VAR])
    warnings = installed_cleaner_warnings()
    assert len(warnings) == 6, warnings  # the installed Ray (2.60): a new warning in an upgrade is looked at
    matched = [w for w in warnings if pattern.search(w)]
    assert matched == ["Failed to query Ray Train Controller actor state. State API may be temporarily "
                       "unavailable. Continuing to monitor."]


def test_a_users_own_skip_regex_is_kept():
    env = {SKIP_REGEX_VAR: "mine"}
    quiet_known_noise(env)
    assert env == {SKIP_REGEX_VAR: "mine"}


def test_rays_log_deduplicator_drops_the_cleaners_lines_and_keeps_the_rest():
    """What the driver does with the value: Ray's LogDeduplicator built as Ray builds it at import."""
    from ray._private.ray_logging import LogDeduplicator

    env: dict[str, str] = {}
    quiet_known_noise(env)
    dedup = LogDeduplicator(5, None, env[SKIP_REGEX_VAR], _timesource=lambda: 0.0)
    lines = [f"{CLEANER_NOISE}. State API may be temporarily unavailable. Continuing to monitor.",
             "Detected that the Ray Train controller actor (abc) is dead. Cleaning up placement group = [pg].",
             f"{CLEANER_NOISE}. State API may be temporarily unavailable. Continuing to monitor."]
    out = dedup.deduplicate({"ip": "127.0.0.1", "pid": 7, "job": "01", "is_err": True, "lines": lines,
                             "actor_name": "PlacementGroupCleaner", "task_name": None})
    assert [batch["lines"] for batch in out] == [[lines[1]]]


def test_a_jobs_main_sets_the_filter_before_ray_is_imported_and_ray_reads_it():
    """`python -m jobs.<name>` runs lib.cli.entry: in a fresh interpreter, the job's main finds the variable set
    and Ray not yet imported, and the deduplicator Ray then builds at import skips the cleaner's line. (A job
    started inside a process that already imported Ray, a test calling ``main``, is not filtered.)"""
    code = ("import sys\n"
            "from lib import cli\n"
            "def main():\n"
            "    imported_before = 'ray' in sys.modules\n"
            "    from ray._private.ray_logging import stderr_deduplicator\n"
            "    return imported_before, stderr_deduplicator.skip_re.pattern\n"
            "cli.entry(main, show=repr)\n")
    env = {k: v for k, v in os.environ.items() if k != SKIP_REGEX_VAR}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == repr((False, re.escape(CLEANER_NOISE)))
