"""mathray's Ray Serve application: the model (vLLM's async engine) and a verifier (lib.grading) behind
one OpenAI-compatible ingress with best-of-N selection. Entry point: ``serve.app:build_app``."""
