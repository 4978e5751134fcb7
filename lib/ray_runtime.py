"""Ray start-up, one place for every job: join the running cluster or start a local one, never twice."""

from __future__ import annotations


def init_ray() -> None:
    """Join the running cluster (``ray job submit`` / RAY_ADDRESS), or start a local one without the
    dashboard (it costs CPU that a 2-core machine needs for sampling; ignored when joining). Never
    re-initializes: a caller that already started Ray (the pipeline, a test fixture) keeps its instance,
    as verl's ``ray.init`` guard does. Ray is imported here, not at module level (``lib`` stays pure)."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
