"""vLLM's engine in the calling process, stepped by one thread, behind the calls mathray makes on ``AsyncLLM``.

``AsyncLLM`` always runs its engine core in a second process. vLLM's CPU build starts that process with spawn
(``CpuPlatform`` sets it, and so does a Ray actor), so every engine start imports vLLM twice and pickles the
config across: on a 2-core AVX2 machine that is most of the difference between ``AsyncLLM``'s start and
``vllm.LLM``'s in-process one. The CPU backend has no asynchronous scheduling for that second process to
overlap, so nothing is lost by keeping the core here: :class:`ThreadedAsyncEngine` drives vLLM's own
``LLMEngine`` (in-process engine core, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine ``vllm.LLM`` uses) from
one thread, and the event loop talks to it through two queues. Only the engine thread touches the engine.

The surface is what :mod:`lib.sampling` and :mod:`serve.model` use: ``generate`` (an async iterator of
``RequestOutput``; ``FINAL_ONLY`` or ``DELTA`` as the params say), ``abort``, ``check_health``, ``shutdown``,
``get_tokenizer`` and ``model_config``. :func:`lib.sampling.start_async_engine` picks it where the engine core
would run in-process (no CUDA); on a GPU ``AsyncLLM`` stays. vLLM is imported lazily (``lib`` stays pure).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class EngineDead(RuntimeError):
    """The engine thread stopped (an exception in a step, or ``shutdown``): no request can be served."""


_STOP = object()
_ABORTED = object()  # ends a request's generate quietly


@dataclass
class _Stream:
    """A request's way back to its ``generate``: the event loop it waits on, its queue of outputs, and whether it
    was aborted (outputs the engine made before it saw the abort are dropped, not yielded)."""

    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    aborted: bool = False


def bound_cores(bind: str) -> int | None:
    """How many cores a ``VLLM_CPU_OMP_THREADS_BIND`` value names for the first (here the only) rank: ``"0,1"``
    2, ``"0-3"`` 4, ``"0-3,8|4-7"`` 5; None for ``""``, ``"auto"``, ``"nobind"`` (vLLM's own choice stays)."""
    first = bind.split("|")[0].strip()
    if first in ("", "auto", "nobind"):
        return None
    count = 0
    for part in first.split(","):
        low, _, high = part.strip().partition("-")
        count += int(high) - int(low) + 1 if high else 1
    return count


class ThreadedAsyncEngine:
    """``vllm.v1.engine.llm_engine.LLMEngine`` stepped by a daemon thread; coroutines in, ``RequestOutput`` out.

    A request's outputs are handed to the event loop that called ``generate`` (``call_soon_threadsafe``);
    an exception raised while adding a request fails that request alone; one raised by ``step`` fails every
    request in flight and marks the engine dead (``check_health`` raises, as ``AsyncLLM``'s does)."""

    def __init__(self, engine: Any, intra_op_threads: int | None = None):
        self.engine = engine
        self.model_config = engine.model_config
        self._intra_op_threads = intra_op_threads
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._error: BaseException | None = None
        self._stopped = False  # set by the engine thread before it fails the requests still waiting
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, engine_args: Any, usage_context: Any) -> ThreadedAsyncEngine:
        import os

        from vllm.v1.engine.llm_engine import LLMEngine

        engine = LLMEngine.from_engine_args(engine_args, usage_context=usage_context, enable_multiprocessing=False)
        return cls(engine, intra_op_threads=bound_cores(os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")))

    def get_tokenizer(self) -> Any:
        return self.engine.get_tokenizer()

    # --- the event loop's side -------------------------------------------------------------------------------

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[Any]:
        """The request's outputs as the engine makes them; aborted in the engine if the caller stops early."""
        self._raise_if_dead()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in the engine")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        if self._stopped:  # the thread stopped between the check above and now: it will not answer
            self._streams.pop(request_id, None)
            self._raise_if_dead()
        self._commands.put(("add", request_id, prompt, params))
        finished = False
        try:
            while True:
                item = await stream.outputs.get()
                if item is _ABORTED or stream.aborted:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:  # cancelled, or the consumer stopped reading: free the engine's slot
                self._commands.put(("abort", request_id))

    async def abort(self, request_id: str) -> None:
        """Stop a request (a no-op once it finished); its ``generate`` ends at once, without a final output and
        without the outputs the engine thread queued before the abort reached it (it steps ahead of a slow
        consumer)."""
        stream = self._streams.pop(request_id, None)
        self._commands.put(("abort", request_id))
        if stream is not None:
            stream.aborted = True
            stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, _ABORTED)

    async def check_health(self) -> None:
        self._raise_if_dead()

    def shutdown(self) -> None:
        """Stop the engine thread (requests in flight fail with :class:`EngineDead`) and free the engine."""
        if self._thread.is_alive():
            self._commands.put((_STOP,))
            self._thread.join(timeout=60)
        core = getattr(self.engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise EngineDead(f"the vLLM engine thread stopped: {self._error!r}") from self._error
        if self._stopped or not self._thread.is_alive():
            raise EngineDead("the vLLM engine thread stopped")

    # --- the engine thread -----------------------------------------------------------------------------------

    def _deliver(self, request_id: str, item: Any) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            try:
                stream.loop.call_soon_threadsafe(stream.outputs.put_nowait, item)
            except RuntimeError:  # that event loop is closed: nobody is waiting
                pass

    def _handle(self, command: tuple) -> bool:
        """Apply one command; False to stop."""
        if command[0] is _STOP:
            return False
        if command[0] == "add":
            _, request_id, prompt, params = command
            if request_id not in self._streams:  # aborted before it reached the engine
                return True
            try:
                self.engine.add_request(request_id, prompt, params)
            except Exception as exc:  # noqa: BLE001 - a bad request fails itself, not the engine
                self._deliver(request_id, exc)
        else:
            self.engine.abort_request([command[1]])
        return True

    def _run(self) -> None:
        """The engine thread. With ``VLLM_CPU_OMP_THREADS_BIND`` (``cpu_threads_bind``), PyTorch's thread count is
        set first to that many cores (process-wide): vLLM's binding sets the OpenMP threads of the thread that built
        the engine only, and another thread computes on PyTorch's count, which a Ray actor that reserves 1 CPU has
        at 1 (Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs). SmolLM2, 8 x 8 samples on a 2-core AVX2 machine,
        ``all`` with ``OMP_NUM_THREADS=1``: 57-60 tokens/s before, 106 after (103-105 without the variable)."""
        if self._intra_op_threads:
            try:
                import torch

                torch._C.set_num_threads(self._intra_op_threads)  # vLLM's CPU worker replaces torch.set_num_threads
            except Exception:  # noqa: BLE001 - speed only: the engine still runs
                log.warning("could not set the engine thread's OpenMP threads to %d", self._intra_op_threads, exc_info=True)
        running = True
        try:
            while running:
                # Idle: block for the next command. Busy: take what is queued, then step.
                block = not self.engine.has_unfinished_requests()
                try:
                    command = self._commands.get(block=block)
                    running = self._handle(command)
                    while running:
                        running = self._handle(self._commands.get_nowait())
                except queue.Empty:
                    pass
                if running and self.engine.has_unfinished_requests():
                    for output in self.engine.step():
                        self._deliver(output.request_id, output)
        except BaseException as exc:  # noqa: BLE001 - recorded; every waiting request gets it
            log.exception("vLLM engine thread failed")
            self._error = exc
        self._stopped = True
        failure = EngineDead(f"the vLLM engine thread stopped: {self._error!r}" if self._error else "the vLLM engine was shut down")
        for request_id in list(self._streams):
            self._deliver(request_id, failure)
