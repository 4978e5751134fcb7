"""OpenAI-compatible request models, response bodies and error bodies (no Ray here).

Unknown request fields are accepted and ignored (clients send many optional ones), except those whose
meaning we cannot honour (``tools``, ``logprobs``), which get a 400 naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lib.selection import RULES
from serve.best_of_n import SERVE_RULES


class BestOfN(BaseModel):
    """The ``mathray`` extension: sample ``n``, pick one by a selection rule of ``lib.selection.RULES``
    (or ``verifier``, Serve's name for ``judge_top_groups``)."""

    model_config = ConfigDict(extra="forbid")
    selection: str = "majority"
    n: int = Field(8, ge=1)
    reference: str | None = Field(None, description="gold answer: the verifier grades against it")

    @field_validator("selection")
    @classmethod
    def _known_rule(cls, name: str) -> str:
        if name not in RULES and name not in SERVE_RULES:
            raise ValueError(f"unknown selection {name!r}; known: {', '.join(sorted([*RULES, *SERVE_RULES]))}")
        return name


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        """Accept OpenAI's list-of-parts form when every part is text."""
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ValueError("only text content parts are supported")
            return "".join(p.get("text", "") for p in content)
        return content


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    mathray: BestOfN | None = None

    def unsupported(self) -> str | None:
        extra = self.model_extra or {}
        for name in ("tools", "functions", "logprobs", "top_logprobs", "echo", "best_of", "suffix"):
            if extra.get(name):
                return name
        return None


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    def effective_max_tokens(self) -> int | None:
        return self.max_tokens


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str | None = None
    response: str
    reference: str | None = None


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(model: str, result: dict[str, Any], choices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    choices = result["choices"] if choices is None else choices
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "finish_reason": c["finish_reason"],
                     "logprobs": None} for i, c in enumerate(choices)],
        "usage": usage(result["prompt_tokens"], sum(c["num_tokens"] for c in result["choices"])),
    }


def completion_response(model: str, result: dict[str, Any], choices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    choices = result["choices"] if choices is None else choices
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None}
                    for i, c in enumerate(choices)],
        "usage": usage(result["prompt_tokens"], sum(c["num_tokens"] for c in result["choices"])),
    }


def stream_chunk(kind: str, stream_id: str, model: str, created: int, text: str | None = None,
                 finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
    choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    return {"id": stream_id, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
