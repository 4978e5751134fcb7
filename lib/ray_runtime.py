"""Ray start-up, one place for every job: join the running cluster or start a local one, never twice."""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

# Ray Train's PlacementGroupCleaner (a detached actor per training run) asks Ray's state API once a second
# whether the run's controller still lives. The state API is served by the dashboard, which a local Ray started
# by init_ray does not run, so every ask fails and the actor warns: 200 of the 1,221 lines `make demo` printed
# (2026-12-05). The cleaner only acts when a controller dies ungracefully, and a local Ray ends with its driver;
# on a cluster (dashboard up) the warning does not occur. With two Ray instances on one machine the cleaner's
# thread ends instead, once, with "Found multiple active Ray instances" (left in the log). Upstream reworks the
# cleaner (ray-project/ray#65447).
CLEANER_NOISE = "Failed to query Ray Train Controller actor state"
SKIP_REGEX_VAR = "RAY_DEDUP_LOGS_SKIP_REGEX"  # Ray's documented filter of worker lines in the driver's log


def quiet_known_noise(environ: MutableMapping[str, str] | None = None) -> None:
    """Drop the cleaner's warning from the driver's log (:data:`CLEANER_NOISE`) through Ray's
    ``RAY_DEDUP_LOGS_SKIP_REGEX``, unless the user set that variable (theirs is kept). Ray reads it when it is
    imported: the jobs' ``__main__`` (``lib.cli.entry``) calls this first, before anything imports Ray."""
    env = os.environ if environ is None else environ
    env.setdefault(SKIP_REGEX_VAR, re.escape(CLEANER_NOISE))


def init_ray() -> None:
    """Join the running cluster (``ray job submit`` / RAY_ADDRESS), or start a local one without the
    dashboard (it costs CPU that a 2-core machine needs for sampling; ignored when joining). Never
    re-initializes: a caller that already started Ray (the pipeline, a test fixture) keeps its instance,
    as verl's ``ray.init`` guard does. Ray is imported here, not at module level (``lib`` stays pure)."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
