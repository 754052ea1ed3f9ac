"""What the daemon wires together (issue 15, item 6), each through a real daemon run:

- its housekeeping forgets bearer tokens that expired or were revoked more than a day ago, so
  the token table does not grow with every login; live tokens, and those that ended less than
  a day ago, are kept (housekeeping runs at start, then every minute);
- a segment a recorder closes reaches the API's playback service at once (the recorder's
  `on_segment`), not at its next round: with the rounds made an hour apart, the new segment's
  playback index is still made and stored within seconds (and, without a daemon, a
  `segment_closed` wakes `keep_warm` between two rounds an hour apart)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from nvr.api import playback
from nvr.api.playback import PlaybackService
from nvr.config import load_config
from nvr.daemon import run_daemon
from nvr.storage import SegmentStore
from nvr.storage.accounts import token_digest
from nvr.storage.schema import TokenRow
from tests.api_rig import free_port
from tests.store_clock import add_segment

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
PASSWORD = "quartz lantern meadow 8431"


def stored_tokens(store: SegmentStore) -> set[str]:
    """Digests of the token rows in the index."""
    with Session(store.index.engine) as s:
        return set(s.scalars(select(TokenRow.token_hash)))


def seed_tokens(root: Path, now: int) -> dict[str, str]:
    """Tokens of every kind, issued and revoked with the store's clock set back as needed."""
    url = f"sqlite:///{root / 'index.db'}"
    root.mkdir(parents=True, exist_ok=True)
    tokens: dict[str, str] = {}
    at = {"now": now - 3 * DAY_MS}
    past = SegmentStore(root, url, exclusive=False, clock=lambda: at["now"])
    try:
        user = past.accounts.add_user("olga", "admin", PASSWORD, actor="test")
        tokens["expired long ago"], _ = past.accounts.issue_token(user, HOUR_MS)
        revoked, _ = past.accounts.issue_token(user, 30 * DAY_MS)
        session = past.accounts.session(revoked)
        assert session is not None
        past.accounts.revoke(session.token_id)
        tokens["revoked long ago"] = revoked
        at["now"] = now - 2 * HOUR_MS
        tokens["expired an hour ago"], _ = past.accounts.issue_token(user, HOUR_MS)
        tokens["live"], _ = past.accounts.issue_token(user, 30 * DAY_MS)
    finally:
        past.close()
    return {why: token_digest(token) for why, token in tokens.items()}


KEPT = {"expired an hour ago", "live"}


def test_store_drops_only_tokens_that_ended_more_than_a_day_ago(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    root = tmp_path / "rec"
    digests = seed_tokens(root, now)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        assert stored_tokens(store) == set(digests.values())
        assert store.accounts.drop_expired_tokens() == 2
        assert stored_tokens(store) == {digests[why] for why in KEPT}
        assert store.accounts.drop_expired_tokens() == 0
    finally:
        store.close()


async def test_daemon_housekeeping_forgets_expired_tokens(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    root = tmp_path / "rec"
    digests = seed_tokens(root, now)
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(f'log_level = "warning"\n[storage]\nroot = "{root}"\nreserve_bytes = 0\n')
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(load_config(cfg), stop=stop), name="daemon")
    reader = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        deadline = time.monotonic() + 30
        while stored_tokens(reader) != {digests[why] for why in KEPT}:
            assert not daemon.done(), daemon
            assert time.monotonic() < deadline, f"tokens left: {stored_tokens(reader)}"
            await asyncio.sleep(0.1)
    finally:
        reader.close()
        stop.set()
        await daemon


async def test_segment_closed_wakes_playback_between_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "rec"
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    service = PlaybackService(store)
    rounds: list[int] = []
    real = service.warm_once

    def counted(cameras: Iterable[str], since: dict[str, int], hours: float) -> int:
        parsed = real(cameras, since, hours)
        rounds.append(parsed)
        return parsed

    monkeypatch.setattr(service, "warm_once", counted)
    stop = asyncio.Event()
    warm = asyncio.create_task(service.keep_warm(lambda: ["cam"], stop, interval=3600))

    async def until(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not cond():
            assert not warm.done(), warm
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    try:
        await until(lambda: len(rounds) == 1, "keep_warm's first round")
        await asyncio.to_thread(add_segment, store, "cam", store.now() - 5_000)
        (segment,) = store.segments("cam")
        service.segment_closed(segment)
        await until(lambda: len(rounds) == 2, "a round woken by segment_closed")
        assert rounds == [0, 1]
        assert service.indexes.has(segment) and store.samples.get([segment])
    finally:
        stop.set()
        await warm
        store.close()


@pytest.mark.slow
async def test_a_closed_segment_reaches_playback_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(playback, "WARM_INTERVAL", 3600.0)
    root = tmp_path / "rec"
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(
        f'log_level = "warning"\n[storage]\nroot = "{root}"\nreserve_bytes = 0\n'
        f'[api]\nlisten = "127.0.0.1:{free_port()}"\n'
        '[[cameras]]\nname = "demo"\nurl = "builtin:testpattern"\nsegment_seconds = 10\n'
    )
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(load_config(cfg), stop=stop), name="daemon")
    try:
        deadline = time.monotonic() + 60
        while not (root / "index.db").exists():
            assert not daemon.done(), daemon
            assert time.monotonic() < deadline, "the daemon made no index"
            await asyncio.sleep(0.1)
        reader = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
        try:
            while True:
                assert not daemon.done(), daemon
                segments = reader.segments("demo")
                if segments and reader.samples.get(segments[:1]):
                    break
                assert time.monotonic() < deadline, f"segments {segments}, none indexed"
                await asyncio.sleep(0.2)
        finally:
            reader.close()
    finally:
        stop.set()
        await daemon
