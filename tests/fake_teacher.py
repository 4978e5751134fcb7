"""A stand-in teacher: a real HTTP server on 127.0.0.1 that speaks the OpenAI chat API and injects faults.

It stands in for what cannot exist in a test: a paid API's 429s (with Retry-After), 500s, slow and
malformed responses, and a bill. Responses are deterministic functions of (messages, seed), so runs can
be compared row by row, and every request is logged, so tests can count exactly what was sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _stable(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def synthesis_responder(messages: list[dict], seed: int) -> str:
    """Plausible teacher output for lib.synthesis' prompts: a new problem (the seed with its numbers scaled),
    solutions (3 of 4 seeds agree on an answer), verification verdicts."""
    prompt = messages[-1]["content"]
    if "New problem:" in prompt:
        seed_question = prompt.split("\n\n")[1]
        scaled = re.sub(r"\d+", lambda m: str(int(m.group()) * (seed + 2)), seed_question)
        return f"New problem: {scaled}"
    if prompt.startswith("Solve the following"):
        answer = _stable(prompt) % 1000 + (1 if seed % 4 == 3 else 0)
        return f"We work through the problem step by step and find the result.\nThe answer is \\boxed{{{answer}}}."
    if "Verdict" in prompt:
        return "Every step checks out.\nVerdict: correct"
    return "I do not understand."


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) refuses bursts of concurrent connections
    daemon_threads = True


class FakeTeacher:
    """``with FakeTeacher() as teacher: teacher.base_url`` -> http://127.0.0.1:PORT/v1.

    ``faults``: specs consumed one per chat request, in order: ``"429:2"`` (429 with Retry-After: 2),
    ``"500"``, ``"401"``, ``"slow:3"`` (answer after 3 s), ``"malformed"`` (200 with a body that is not JSON),
    ``"empty"`` (200 with no choices), ``None`` (answer normally). ``fault_fn(n, body)`` may return a spec
    for the n-th request instead. ``delay_s`` delays every answer.
    """

    def __init__(self, responder: Callable[[list[dict], int], str] = synthesis_responder, model: str = "fake-teacher",
                 api_key: str | None = None, faults: list[str | None] | None = None,
                 fault_fn: Callable[[int, dict], str | None] | None = None, delay_s: float = 0.0):
        self.responder, self.model, self.api_key = responder, model, api_key
        self.faults = list(faults or [])
        self.fault_fn = fault_fn
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.log: list[dict] = []  # every chat request: {"body", "fault", "time"}
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def answered(self) -> list[dict]:
        """Bodies of the chat requests that got a normal answer."""
        with self.lock:
            return [entry["body"] for entry in self.log if entry["fault"] is None]

    def __enter__(self) -> FakeTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_fault(self, body: dict) -> str | None:
        with self.lock:
            n = len(self.log)
            fault = self.faults.pop(0) if self.faults else (self.fault_fn(n, body) if self.fault_fn else None)
            self.log.append({"body": body, "fault": fault, "time": time.time()})
        return fault

    def _handler(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
                body = {"error": {"message": message, "type": "fake_error", "code": status}}
                self._send(status, json.dumps(body).encode(), headers)

            def _authorized(self) -> bool:
                if teacher.api_key and self.headers.get("Authorization") != f"Bearer {teacher.api_key}":
                    self._error(401, "invalid api key")
                    return False
                return True

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": teacher.model, "object": "model", "created": 0, "owned_by": "fake"}]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._error(404, "not found")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._authorized():
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._error(404, "not found")
                fault = teacher._next_fault(body)
                if teacher.delay_s:
                    time.sleep(teacher.delay_s)
                if fault and fault.startswith("429"):
                    return self._error(429, "rate limited", {"Retry-After": fault.split(":")[1]} if ":" in fault else None)
                if fault in ("500", "401", "400"):
                    return self._error(int(fault), "injected")
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [')
                if fault == "empty":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                       "model": teacher.model, "choices": []}).encode())
                if fault and fault.startswith("slow"):
                    time.sleep(float(fault.split(":")[1]))
                text = teacher.responder(body["messages"], int(body.get("seed") or 0))
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                completion_tokens = len(text.split())
                finish = "length" if completion_tokens >= body.get("max_tokens", 1 << 30) else "stop"
                payload = {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": teacher.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }
                self._send(200, json.dumps(payload).encode())

        return Handler
