"""lib.threaded_engine's bookkeeping on a scripted stand-in for vLLM's LLMEngine (the real engine behind it is
exercised by the sampling, evaluation and Serve tests): outputs reach their own request, a bad request fails
alone, a failing step fails every request and the health check, abort and an early stop free the engine; the
engine thread computes on as many OpenMP threads as the core binding names."""

import asyncio
import threading
import time
from dataclasses import dataclass, field

import pytest

from lib.threaded_engine import EngineDead, ThreadedAsyncEngine, bound_cores


@dataclass
class Output:
    request_id: str
    token: int
    finished: bool


@dataclass
class ScriptedEngine:
    """Each request gets ``length`` outputs, one per step, the last finished; with ``stall_after``, a request
    stops getting outputs after that many (it stays unfinished until aborted). ``add_request`` raises for a
    prompt "bad"; ``step`` raises once ``fail_at_step`` steps are done. Records the thread of every call."""

    length: int = 3
    stall_after: int | None = None
    fail_at_step: int | None = None
    model_config: str = "config"
    left: dict = field(default_factory=dict)
    aborted: list = field(default_factory=list)
    threads: set = field(default_factory=set)
    steps: int = 0
    omp_threads: set = field(default_factory=set)

    def get_tokenizer(self):
        return "tokenizer"

    def add_request(self, request_id, prompt, params):
        self.threads.add(threading.get_ident())
        if prompt == "bad":
            raise ValueError(f"bad prompt for {request_id}")
        self.left[request_id] = params

    def abort_request(self, request_ids):
        self.threads.add(threading.get_ident())
        for request_id in request_ids:
            if self.left.pop(request_id, None) is not None:
                self.aborted.append(request_id)

    def has_unfinished_requests(self):
        return bool(self.left)

    def step(self):
        import torch

        self.threads.add(threading.get_ident())
        self.omp_threads.add(torch.get_num_threads())
        if self.fail_at_step is not None and self.steps >= self.fail_at_step:
            raise RuntimeError("engine step failed")
        self.steps += 1
        outputs = []
        for request_id in list(self.left):
            if self.stall_after is not None and self.length - self.left[request_id] >= self.stall_after:
                time.sleep(0.001)  # stalled: no output, and no busy loop in the engine thread
                continue
            self.left[request_id] -= 1
            outputs.append(Output(request_id, self.left[request_id], self.left[request_id] == 0))
            if self.left[request_id] == 0:
                del self.left[request_id]
        return outputs


async def collect(engine, request_id, prompt="p", length=3):
    return [(o.request_id, o.token, o.finished) async for o in engine.generate(prompt, length, request_id)]


def test_each_request_gets_its_own_outputs_in_order_and_the_engine_runs_on_one_other_thread():
    scripted = ScriptedEngine()
    engine = ThreadedAsyncEngine(scripted)

    async def main():
        return await asyncio.gather(collect(engine, "a", length=3), collect(engine, "b", length=1),
                                    collect(engine, "c", length=2))

    a, b, c = asyncio.run(main())
    assert a == [("a", 2, False), ("a", 1, False), ("a", 0, True)]
    assert b == [("b", 0, True)] and c == [("c", 1, False), ("c", 0, True)]
    assert (engine.model_config, engine.get_tokenizer()) == ("config", "tokenizer")
    assert scripted.threads == {engine._thread.ident} != {threading.get_ident()}
    asyncio.run(engine.check_health())
    engine.shutdown()
    assert not engine._thread.is_alive()
    with pytest.raises(EngineDead, match="stopped"):
        asyncio.run(engine.check_health())


def test_a_bad_request_fails_alone():
    engine = ThreadedAsyncEngine(ScriptedEngine())

    async def main():
        return await asyncio.gather(collect(engine, "bad", prompt="bad"), collect(engine, "good", length=2),
                                    return_exceptions=True)

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and str(bad) == "bad prompt for bad"
    assert good == [("good", 1, False), ("good", 0, True)]
    asyncio.run(engine.check_health())
    engine.shutdown()


def test_a_failing_step_fails_every_request_in_flight_and_the_health_check():
    engine = ThreadedAsyncEngine(ScriptedEngine(fail_at_step=1))

    async def main():
        return await asyncio.gather(collect(engine, "x", length=5), collect(engine, "y", length=5),
                                    return_exceptions=True)

    x, y = asyncio.run(main())
    assert isinstance(x, EngineDead) and isinstance(y, EngineDead)
    assert "RuntimeError('engine step failed')" in str(x)
    with pytest.raises(EngineDead, match="engine step failed"):
        asyncio.run(engine.check_health())
    with pytest.raises(EngineDead):
        asyncio.run(collect(engine, "z"))


def test_abort_ends_the_request_quietly_and_a_consumer_that_stops_reading_frees_its_slot():
    """An abort ends its generate at once: an output the engine thread had already queued (it steps ahead of a
    slow consumer; a clean-clone run once got all 1000 of an unstalled request) is not yielded. Both requests
    are aborted in the engine."""
    scripted = ScriptedEngine(length=1000, stall_after=3)
    engine = ThreadedAsyncEngine(scripted)

    async def aborted():
        seen = []
        async for output in engine.generate("p", 1000, "ab"):
            seen.append(output.token)
            if len(seen) == 2:
                while scripted.steps < 4:  # the third output (997) is made and queued before the abort
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.01)
                await engine.abort("ab")
        return seen

    async def stopped_early():
        stream = engine.generate("p", 1000, "early")
        async for _ in stream:
            break
        await stream.aclose()

    async def main():
        seen = await aborted()
        await stopped_early()
        for _ in range(100):  # the abort travels to the engine thread
            if "early" in scripted.aborted:
                break
            await asyncio.sleep(0.01)
        return seen

    seen = asyncio.run(main())
    assert seen == [999, 998]  # none of the outputs the engine thread made before it saw the abort
    assert scripted.aborted == ["ab", "early"] and not scripted.left
    engine.shutdown()


@pytest.mark.parametrize("bind, cores", [("0,1", 2), ("0-3", 4), ("0-3,8|4-7", 5), (" 2 ", 1), ("", None), ("auto", None),
                                         ("nobind", None)])
def test_bound_cores_counts_the_first_ranks_cores(bind, cores):
    assert bound_cores(bind) == cores


def test_the_engine_thread_steps_on_the_bound_number_of_openmp_threads():
    """A thread computes on PyTorch's process-wide thread count, which Ray's ``OMP_NUM_THREADS`` fixes for an
    actor (1 for an actor reserving 1 CPU) whatever vLLM's core binding gave the thread that built the engine; the
    engine thread sets the bound count first. Without a count it keeps what the process has."""
    import torch

    def count_in_a_new_thread() -> int:
        seen = []
        probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        probe.start()
        probe.join()
        return seen[0]

    default = count_in_a_new_thread()
    try:
        for wanted, expected in ((None, default), (default + 1, default + 1)):
            scripted = ScriptedEngine()
            engine = ThreadedAsyncEngine(scripted, intra_op_threads=wanted)
            assert asyncio.run(collect(engine, "a", length=2)) == [("a", 1, False), ("a", 0, True)]
            engine.shutdown()
            assert scripted.omp_threads == {expected}
        assert count_in_a_new_thread() == default + 1  # process-wide: what an actor's later threads get too
    finally:
        torch._C.set_num_threads(default)  # the rest of this test process keeps its count
