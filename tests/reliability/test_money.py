"""Money: a paid response is paid once and counted once, even when the cache cannot store it; the budget
holds under injected cache failures; the cache's journal works on network filesystems (no WAL)."""

import asyncio
import sqlite3

from lib.teacher import Governor, Pricing, RequestCache, TeacherClient, TeacherSettings
from tests.fake_teacher import FakeTeacher

TEN_WORDS = "one two three four five six seven eight nine ten"


class FullDiskCache(RequestCache):
    """A cache whose writes fail as on a full disk (reads work)."""

    def put(self, key, stage, record):
        raise sqlite3.OperationalError("database or disk is full")


def test_cache_write_failure_after_a_paid_response_pays_once_and_stops_spending(tmp_path):
    """Each answer costs $0.21 (10 completion tokens; worst case reserved $0.21 at max_tokens=10), budget
    $1.20. The first paid response cannot be cached: it is returned (kept), never retried, its cost stays
    on the ledger, and no further request is sent (spend that cannot be recorded must stop). Before the
    fix: 15 requests paid, $3.15 spent against $1.20, every one retried, nothing kept."""
    pricing = Pricing(prompt_usd_per_mtok=0, completion_usd_per_mtok=21_000)
    governor = Governor(budget_usd=1.20)
    cache = FullDiskCache(tmp_path / "cache.sqlite")
    with FakeTeacher(responder=lambda messages, seed: TEN_WORDS) as teacher:
        settings = TeacherSettings(base_url=teacher.base_url, model=teacher.model, backoff_base_s=0, max_tokens=10,
                                   pricing=pricing, max_concurrency=1)
        client = TeacherClient(settings, governor=governor, cache=cache)

        async def sequential():
            out = [await client.complete([{"role": "user", "content": "q"}], sample_index=i) for i in range(5)]
            await client.close()
            return out

        results = asyncio.run(sequential())
    assert len(teacher.log) == 1
    assert results[0].ok and results[0].text == TEN_WORDS and results[0].attempts == 1
    assert all(r.error is not None and r.error.startswith("cache_unwritable") and r.attempts == 0 for r in results[1:])
    ledger = governor.snapshot()
    assert round(ledger["spent"], 6) == 0.21 and ledger["reserved"] == 0 and ledger["requests"] == 1


def test_unrecorded_spend_is_counted_by_a_resumed_run(tmp_path):
    """A response paid for but not cached is written to the cache's spend journal, so the next run's
    already_spent (RequestCache.total_cost) still counts it."""
    path = tmp_path / "cache.sqlite"
    pricing = Pricing(prompt_usd_per_mtok=0, completion_usd_per_mtok=21_000)
    with FakeTeacher(responder=lambda messages, seed: TEN_WORDS) as teacher:
        settings = TeacherSettings(base_url=teacher.base_url, model=teacher.model, max_tokens=10, pricing=pricing)
        client = TeacherClient(settings, cache=FullDiskCache(path))
        asyncio.run(client.complete([{"role": "user", "content": "q"}]))
        asyncio.run(client.close())
    assert round(RequestCache(path).total_cost(), 6) == 0.21


def test_cache_uses_a_rollback_journal_that_works_on_nfs(tmp_path):
    """WAL needs shared memory (mmap'd -shm) that NFS/EFS cannot provide: the cache uses journal_mode DELETE,
    leaves no -wal/-shm files, and converts a cache written by an older (WAL) version."""
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, stage TEXT, record TEXT, cost REAL, created REAL)")
    db.close()
    for path in (tmp_path / "new.sqlite", old):
        cache = RequestCache(path)
        cache.put("k", "chat", {"text": "x", "cost": 0.5})
        assert cache._db().execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert len(cache) == 1 and cache.total_cost() == 0.5
        assert not path.with_name(path.name + "-wal").exists() and not path.with_name(path.name + "-shm").exists()
