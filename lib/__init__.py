"""mathray's pure library: data, prompts, extraction, grading, metrics, models.

Nothing here imports Ray, vLLM or DeepSpeed at module level, and nothing calls ``ray.init``.
"""

__version__ = "0.1.0"
