"""mathray's endpoint: the model and a verifier behind one OpenAI-compatible FastAPI ingress on Ray Serve.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (n, temperature, top_p, max_tokens, stop,
seed, streaming for n=1, and the ``mathray`` best-of-N extension), ``POST /v1/verify``, ``GET /v1/models``,
``GET /health`` (liveness), ``GET /ready`` (the model answers). Every ``/v1`` route needs
``Authorization: Bearer <key>``. Errors have OpenAI's shape and never carry a stack trace.

Best-of-N: ``"mathray": {"selection": <rule>, "n": 16, "reference": "42"}`` samples n completions, extracts
their final answers, groups equivalent answers with ``lib.grading`` and returns the completion chosen by
the rule (one choice) plus ``mathray``: the answers, groups, votes, verdicts and the reason. A rule is any
name of ``lib.selection.RULES`` (the rules the evaluation job measures as select@k) or ``verifier`` (alias
of ``judge_top_groups``). Rules that need per-sample scores (``verifier``, ``judge_top_groups``,
``verifier_weighted``) score the samples by grading against ``reference``, or without one the model itself
judges the largest groups' representatives (the paper's verification prompt; unjudged samples score 0).

Run:    serve run serve/configs/serve_default_cpu.yaml       (or ``make serve``)
Deploy: serve deploy serve/configs/serve_default_cpu.yaml    (to a running cluster)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from lib.selection import NEEDS_SCORES
from serve.best_of_n import JUDGED_GROUPS, SERVE_RULES, choose
from serve.config import ServeArgs
from serve.model import ModelServer
from serve.openai_api import (
    ChatRequest,
    CompletionRequest,
    VerifyRequest,
    chat_response,
    completion_response,
    error_body,
    new_id,
    stream_chunk,
    usage,
)
from serve.verifier import Verifier

log = logging.getLogger("mathray.serve")
app = FastAPI(title="mathray", docs_url=None, redoc_url=None, openapi_url=None)


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param), status_code=status)


def UNAUTHORIZED() -> JSONResponse:  # noqa: N802 - a fixed response
    return error(401, "missing or invalid API key (Authorization: Bearer <key>)", "authentication_error")


@app.middleware("http")
async def log_requests(request: Request, call_next):
    start = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001 - logged here, answered without internals
        log.exception("request %s %s %s failed", request_id, request.method, request.url.path)
        response = error(500, "internal error; see the server log", "server_error")
    response.headers["x-request-id"] = request_id
    log.info("%s %s %s %d %.1f ms", request_id, request.method, request.url.path, response.status_code,
             (time.perf_counter() - start) * 1000)
    return response


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else "invalid_request_error")


@app.exception_handler(Exception)
async def unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error(500, "internal error; see the server log", "server_error")


def authorized(header: str, keys: set[str]) -> bool:
    """True when no keys are configured, or ``header`` is ``Bearer <key>`` for a configured key. Every key
    is compared in constant time (``hmac.compare_digest``), all of them, so timing tells nothing."""
    if not keys:
        return True
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    return any(matches)


SEED_RANGE = (-(2**63), 2**63 - 1)  # what the engine's random generators accept


def parse_body(raw: bytes, model_cls):
    """(request, None) or (None, a 400 response) for a body: UTF-8 JSON (no lone surrogates: they cannot be
    tokenized), the request schema, a seed the engine accepts. Never raises on client input."""
    try:
        data = json.loads((raw or b"null").decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, error(400, f"body is not valid UTF-8 (byte {exc.start})")
    except json.JSONDecodeError as exc:
        return None, error(400, f"body is not valid JSON: {exc}")
    except RecursionError:
        return None, error(400, "body is nested too deeply")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, error(400, "body contains a lone surrogate escape (e.g. \\ud800): not valid Unicode text")
    try:
        body = model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        return None, error(400, f"{param}: {first['msg']}" if param else first["msg"], param=param)
    seed = getattr(body, "seed", None)
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        return None, error(400, f"seed must be a 64-bit integer ({SEED_RANGE[0]} to {SEED_RANGE[1]})", param="seed")
    return body, None


def question_of(body: ChatRequest | CompletionRequest) -> str:
    if isinstance(body, ChatRequest):
        return next((m.content for m in reversed(body.messages) if m.role == "user"), body.messages[-1].content)
    return body.prompt


@serve.deployment(name="ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, model: DeploymentHandle, verifier: DeploymentHandle, args: dict[str, Any]):
        from lib.progress import setup_logging

        setup_logging()
        self.model, self.verifier = model, verifier
        self.args = ServeArgs.model_validate(args)
        self.keys = self.args.api_keys()
        self.limits = self.args.limits

    # ----------------------------------------------------------------------------------------- guards

    async def parse(self, request: Request, model_cls):
        """(body, None) or (None, error response): auth, body size, JSON, schema, model name, caps."""
        if not authorized(request.headers.get("authorization", ""), self.keys):
            return None, UNAUTHORIZED()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return None, error(413, f"request body over {self.limits.max_body_bytes} bytes")
        raw = await request.body()
        if len(raw) > self.limits.max_body_bytes:
            return None, error(413, f"request body over {self.limits.max_body_bytes} bytes")
        body, err = parse_body(raw, model_cls)
        if err is not None:
            return None, err
        if model_cls is VerifyRequest:
            return body, None
        if body.model != self.args.served_name:
            return None, error(404, f"model {body.model!r} does not exist; this server serves {self.args.served_name!r}",
                               "not_found_error", "model")
        if (name := body.unsupported()) is not None:
            return None, error(400, f"{name} is not supported by this server", param=name)
        if body.n > self.limits.max_n:
            return None, error(400, f"n={body.n} is over the limit of {self.limits.max_n}", param="n")
        if body.mathray is not None and body.mathray.n > self.limits.max_best_of_n:
            return None, error(400, f"mathray.n={body.mathray.n} is over the limit of {self.limits.max_best_of_n}",
                               param="mathray.n")
        if (max_tokens := body.effective_max_tokens()) is not None and max_tokens > self.limits.max_tokens:
            return None, error(400, f"max_tokens={max_tokens} is over the limit of {self.limits.max_tokens}", param="max_tokens")
        if body.stream and (body.n > 1 or body.mathray is not None):
            return None, error(400, "streaming is supported for n=1 without best-of-N", param="stream")
        return body, None

    @staticmethod
    def engine_request(body: ChatRequest | CompletionRequest, n: int | None = None) -> dict[str, Any]:
        req: dict[str, Any] = {"n": n or body.n, "temperature": body.temperature, "top_p": body.top_p,
                               "max_tokens": body.effective_max_tokens(), "stop": body.stop, "seed": body.seed,
                               "request_id": uuid.uuid4().hex}
        if isinstance(body, ChatRequest):
            req["messages"] = [{"role": m.role, "content": m.content} for m in body.messages]
        else:
            req["prompt"] = body.prompt
        return req

    # ----------------------------------------------------------------------------------------- routes

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(self):
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason
            return error(503, f"model not ready: {type(exc).__name__}", "server_error")
        return {"status": "ready", **info}

    @app.get("/v1/models")
    async def models(self, request: Request):
        if not authorized(request.headers.get("authorization", ""), self.keys):
            return UNAUTHORIZED()
        return {"object": "list", "data": [{"id": self.args.served_name, "object": "model", "created": 0,
                                            "owned_by": "mathray"}]}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self.complete(request, ChatRequest)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self.complete(request, CompletionRequest)

    @app.post("/v1/verify")
    async def verify(self, request: Request):
        body, err = await self.parse(request, VerifyRequest)
        if err:
            return err
        verdict = await self.verifier.verify.remote(body.response, body.reference)
        return {"object": "verification", "question": body.question, "reference": body.reference, **verdict}

    async def complete(self, request: Request, model_cls):
        body, err = await self.parse(request, model_cls)
        if err:
            return err
        kind = "chat" if model_cls is ChatRequest else "completion"
        if body.stream:
            return await self.stream(body, kind)
        if body.mathray is not None:
            return await self.best_of_n(body, kind)
        result = await self.model.generate.remote(self.engine_request(body))
        if "error" in result:
            return error(result["error"]["status"], result["error"]["message"], param=result["error"]["param"])
        build = chat_response if kind == "chat" else completion_response
        return build(self.args.served_name, result)

    async def stream(self, body, kind: str):
        gen = self.model.options(stream=True).stream.remote(self.engine_request(body))
        first = await gen.__anext__()
        if "error" in first:
            return error(first["error"]["status"], first["error"]["message"], param=first["error"]["param"])
        stream_id, created, model = new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time()), self.args.served_name
        include_usage = bool((body.stream_options or {}).get("include_usage"))

        async def events():
            def sse(obj: dict) -> str:
                return f"data: {json.dumps(obj)}\n\n"

            if kind == "chat":
                yield sse(stream_chunk(kind, stream_id, model, created, role=True, text=""))
            item = first
            while item is not None:
                if "text" in item:
                    yield sse(stream_chunk(kind, stream_id, model, created, text=item["text"]))
                if "finish_reason" in item:
                    yield sse(stream_chunk(kind, stream_id, model, created, finish_reason=item["finish_reason"]))
                    if include_usage:
                        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                        yield sse({"id": stream_id, "object": obj, "created": created, "model": model, "choices": [],
                                   "usage": usage(item["prompt_tokens"], item["completion_tokens"])})
                item = await anext(gen, None)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def best_of_n(self, body, kind: str):
        from lib.extraction import final_answer
        from lib.verification import parse_verdict, verify_messages

        spec = body.mathray
        result = await self.model.generate.remote(self.engine_request(body, n=spec.n))
        if "error" in result:
            return error(result["error"]["status"], result["error"]["message"], param=result["error"]["param"])
        texts = [c["text"] for c in result["choices"]]
        answers = [final_answer(t) for t in texts]
        groups = await self.verifier.group.remote(answers)
        verdicts: dict[int, bool | None] = {}
        judged_tokens = 0
        scored = SERVE_RULES.get(spec.selection, spec.selection) in NEEDS_SCORES
        if scored and spec.reference is not None:
            judged = await self.verifier.judge_answers.remote(answers, spec.reference)
            verdicts = {i: v for i, v in enumerate(judged) if v is not None}
        elif scored:
            reps = [g[0] for g in groups[:JUDGED_GROUPS]]
            judgements = await asyncio.gather(*[self.model.generate.remote(
                {"messages": verify_messages(question_of(body), texts[i]), "n": 1, "temperature": 0.0, "max_tokens": 256})
                for i in reps])
            for i, judged in zip(reps, judgements):
                verdicts[i] = parse_verdict(judged["choices"][0]["text"]) if "error" not in judged else None
                judged_tokens += sum(c["num_tokens"] for c in judged.get("choices", []))
        chosen, trace = choose(answers, groups, spec.selection, verdicts, texts=texts)
        trace["judge_completion_tokens"] = judged_tokens
        build = chat_response if kind == "chat" else completion_response
        response = build(self.args.served_name, result, choices=[result["choices"][chosen]])
        response["mathray"] = trace
        return response


def build_app(args: dict[str, Any]) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path: serve.app:build_app``)."""
    config = ServeArgs.model_validate(args or {})
    config.api_keys()  # fail at build time, naming the env var, rather than at the first request
    data = config.model_dump()
    model = ModelServer.options(**config.model_replicas.deployment_options(),
                                graceful_shutdown_timeout_s=config.graceful_shutdown_timeout_s).bind(data)
    verifier = Verifier.options(**config.verifier_replicas.deployment_options()).bind(
        config.grading_timeout_s, config.grader_pool_size, config.grading_budget_s, config.grader_memory_mb)
    return Ingress.options(**config.ingress_replicas.deployment_options(),
                           graceful_shutdown_timeout_s=config.graceful_shutdown_timeout_s).bind(model, verifier, data)
