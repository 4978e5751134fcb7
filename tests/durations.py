"""Write tests/durations.json (seconds per test, the order conftest.py runs them in) from the log of a full
serial run: ``pytest --durations=0 > LOG; python -m tests.durations LOG``. Setup, call and teardown of a test
are added; tests under 2 s are left out (they keep their file order, after the measured ones)."""

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S+)")
MIN_S = 2.0


def durations(log: str) -> dict[str, int]:
    seconds: dict[str, float] = defaultdict(float)
    for line in log.splitlines():
        if match := LINE.match(line):
            seconds[match.group(2)] += float(match.group(1))
    return {k: round(v) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1]) if v >= MIN_S}


if __name__ == "__main__":
    found = durations(Path(sys.argv[1]).read_text())
    if not found:
        sys.exit(f"{sys.argv[1]}: no `--durations=0` lines")
    out = Path(__file__).with_name("durations.json")
    out.write_text(json.dumps(found, indent=1) + "\n")
    print(f"{out}: {len(found)} tests, {sum(found.values())} s")
