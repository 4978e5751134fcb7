"""mathray's Ray jobs: one module per job, run as ``python -m jobs.<name> --config FILE key=value ...``."""
