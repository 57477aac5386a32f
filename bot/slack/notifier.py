"""The one place that writes to Slack: replies, the status card, milestones, owner-only notes.

Why: every environment has a thread whose root is its status card, and several parties want to
say something there — the command handlers (through replies), the pipeline runner (through
`Events`), the scheduler. If each posted on its own, two of them would race to post the root,
and a busy pipeline would hit Slack's rate limits with card updates. Here:

- the root is posted once: the environment row's `thread_ts` is claimed with a conditional
  UPDATE before posting and set to the real ts after (so two tasks or two processes never post
  two roots, and no connection is held while a paced post waits);
- card updates are coalesced per environment: a burst of progress events becomes one
  `chat.update` rendered from the store's state *at the time of the update*, so the final
  state always lands (`flush()` waits for it) and a restarted process renders the same card;
- a failed Slack write is logged — never with a token or the message text, which may carry
  credentials — and never raised to the caller: a pipeline must not fail because Slack did.

Neighbours: `bot.slack.blocks` renders, `bot.slack.writer` posts, `bot.store.repo` reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, update

from bot.domain import ProgressEvent
from bot.ports import Invocation, Reply, Visibility
from bot.slack.blocks import card_view, status_card, status_card_text
from bot.slack.writer import SlackWriteError, SlackWriter
from bot.store import Store, repo
from bot.store.models import Environment

_PENDING = "pending:"
_ROOT_STALE_SECONDS = 600  # a claimant that has not posted in 10 minutes has died
_ROOT_WAIT_SECONDS = 60.0  # how long another process's pending root is waited for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Thread:
    channel: str
    ts: str
    new: bool  # the card was posted just now, so it is fresh


class Notifier:
    """Implements `bot.ports.Events`; also delivers handler replies and refreshes cards."""

    def __init__(self, store: Store, writer: SlackWriter, *, coalesce_seconds: float = 0.5) -> None:
        self._store = store
        self._writer = writer
        self._coalesce = coalesce_seconds
        self._dirty: set[int] = set()
        self._refreshers: dict[int, asyncio.Task[None]] = {}
        self._card_locks: dict[int, asyncio.Lock] = {}
        self._closed = False

    # ----------------------------------------------------------------------- Events

    async def progress(self, event: ProgressEvent) -> None:
        """Schedule a card update; a milestone's detail is also posted in the thread."""
        if event.milestone and event.detail:
            with self._guard("post a milestone", env_id=event.env_id):
                await self._post_in_thread(event.env_id, text=event.detail, blocks=None)
        self._schedule(event.env_id)

    async def to_owner(self, env_id: int, text: str) -> None:
        with self._guard("write to the owner", env_id=env_id):
            await self._to_owner(env_id, text=text, blocks=None)

    # ----------------------------------------------------------------------- replies

    async def deliver(self, inv: Invocation, replies: Sequence[Reply]) -> None:
        """Post each reply where its visibility says; one failing does not stop the others."""
        for reply in replies:
            with self._guard(f"deliver a {reply.visibility} reply", env_id=reply.env_id,
                             channel=inv.channel_id):
                await self._deliver(inv, reply)

    async def _deliver(self, inv: Invocation, reply: Reply) -> None:
        text, blocks, env_id = reply.text, reply.blocks, reply.env_id
        if env_id is None and reply.visibility in (Visibility.THREAD, Visibility.OWNER):
            # No environment to attach to: answer where the person asked.
            if reply.visibility is Visibility.THREAD and inv.thread_ts:
                await self._writer.post_message(inv.channel_id, text=text, blocks=blocks,
                                                thread_ts=inv.thread_ts)
                return
            await self._writer.post_ephemeral(inv.channel_id, inv.user_id, text=text,
                                              blocks=blocks)
            return
        match reply.visibility:
            case Visibility.EPHEMERAL:
                await self._writer.post_ephemeral(inv.channel_id, inv.user_id, text=text,
                                                  blocks=blocks)
            case Visibility.CHANNEL:
                await self._writer.post_message(inv.channel_id, text=text, blocks=blocks)
            case Visibility.THREAD:
                assert env_id is not None
                if not (await self._post_in_thread(env_id, text=text, blocks=blocks)).new:
                    self._schedule(env_id)  # the reply may follow a change the card shows
            case Visibility.OWNER:
                assert env_id is not None
                await self._to_owner(env_id, text=text, blocks=blocks)

    # ----------------------------------------------------------------------- the card

    async def refresh_card(self, env_id: int) -> None:
        """Render the card from the store now and update it (posting it if there is none)."""
        with self._guard("refresh the status card", env_id=env_id):
            async with self._card_lock(env_id):
                async with self._store.transaction() as s:
                    env = await repo.get_environment(s, env_id)
                    view = card_view(env, await repo.latest_phase_runs(s, env_id))
                if env.thread_ts is None or env.thread_ts.startswith(_PENDING):
                    await self._ensure_thread(env_id)
                    return
                await self._writer.update_message(env.channel_id, env.thread_ts,
                                                  text=status_card_text(view),
                                                  blocks=status_card(view))

    async def flush(self) -> None:
        """Wait until every scheduled card update has landed (or failed and been logged)."""
        while self._refreshers:
            await asyncio.gather(*self._refreshers.values(), return_exceptions=True)

    async def close(self) -> None:
        """Let pending card updates land; afterwards progress events schedule nothing."""
        await self.flush()
        self._closed = True

    def _schedule(self, env_id: int) -> None:
        if self._closed:
            return
        self._dirty.add(env_id)
        if env_id not in self._refreshers:
            self._refreshers[env_id] = asyncio.get_running_loop().create_task(
                self._refresher(env_id), name=f"ephem-card-{env_id}")

    async def _refresher(self, env_id: int) -> None:
        """Gather a burst for `coalesce_seconds`, then render once; again while more came in."""
        try:
            while env_id in self._dirty:
                await asyncio.sleep(self._coalesce)
                self._dirty.discard(env_id)
                await self.refresh_card(env_id)
        finally:
            self._refreshers.pop(env_id, None)

    def _card_lock(self, env_id: int) -> asyncio.Lock:
        """Serializes this process's card work per environment, so renders land in order."""
        return self._card_locks.setdefault(env_id, asyncio.Lock())

    async def _ensure_thread(self, env_id: int) -> _Thread:
        """The environment's thread, posting its card as the root the first time.

        Call with the card lock held. Across processes the root is *claimed* first: a marker
        (`pending:<epoch>`) is written into `thread_ts` by a conditional UPDATE, and only the
        claimant posts. No database connection or row lock is held while the post waits for
        the channel's pace (posting is paced to about one a second, so under a burst that wait
        is long, and holding connections through it starves every other request of the pool).
        """
        env = await self._read_env(env_id)
        deadline = time.monotonic() + _ROOT_WAIT_SECONDS
        while True:
            if env.thread_ts and not env.thread_ts.startswith(_PENDING):
                return _Thread(env.channel_id, env.thread_ts, new=False)
            marker = f"{_PENDING}{int(time.time())}"
            if await self._claim_root(env_id, marker):
                break
            if time.monotonic() > deadline:
                raise SlackWriteError("chat.postMessage", "the thread root is still pending")
            await asyncio.sleep(0.2)  # another process is posting the root right now
            env = await self._read_env(env_id)
        try:
            env = await self._read_env(env_id)
            async with self._store.transaction() as s:
                view = card_view(env, await repo.latest_phase_runs(s, env_id))
            ts = await self._writer.post_message(env.channel_id, text=status_card_text(view),
                                                 blocks=status_card(view))
        except BaseException:
            await self._set_root(env_id, expected=marker, ts=None)
            raise
        await self._set_root(env_id, expected=marker, ts=ts)
        # The card was rendered before the post waited its turn; show what happened since.
        self._schedule(env_id)
        return _Thread(env.channel_id, ts, new=True)

    async def _read_env(self, env_id: int) -> Environment:
        async with self._store.transaction() as s:
            return await repo.get_environment(s, env_id)

    async def _claim_root(self, env_id: int, marker: str) -> bool:
        stale = f"{_PENDING}{int(time.time() - _ROOT_STALE_SECONDS)}"
        async with self._store.transaction() as s:
            result = await s.execute(
                update(Environment)
                .where(Environment.id == env_id,
                       or_(Environment.thread_ts.is_(None),
                           and_(Environment.thread_ts.startswith(_PENDING),
                                Environment.thread_ts < stale)))
                .values(thread_ts=marker)
            )
        return int(result.rowcount) == 1  # type: ignore[attr-defined]

    async def _set_root(self, env_id: int, *, expected: str, ts: str | None) -> None:
        async with self._store.transaction() as s:
            await s.execute(update(Environment)
                            .where(Environment.id == env_id, Environment.thread_ts == expected)
                            .values(thread_ts=ts))

    async def _post_in_thread(
        self, env_id: int, *, text: str, blocks: Sequence[Mapping[str, Any]] | None
    ) -> _Thread:
        async with self._card_lock(env_id):
            thread = await self._ensure_thread(env_id)
        await self._writer.post_message(thread.channel, text=text, blocks=blocks,
                                        thread_ts=thread.ts)
        return thread

    async def _to_owner(
        self, env_id: int, *, text: str, blocks: Sequence[Mapping[str, Any]] | None
    ) -> None:
        async with self._store.transaction() as s:
            env = await repo.get_environment(s, env_id)
        await self._writer.post_ephemeral(env.channel_id, env.owner_id, text=text, blocks=blocks)

    # ----------------------------------------------------------------------- failures

    @contextmanager
    def _guard(self, what: str, *, env_id: int | None = None,
               channel: str | None = None) -> Iterator[None]:
        """Log a failed write with its context — never the text — and carry on."""
        try:
            yield
        except SlackWriteError as exc:
            log.warning("slack: could not %s (env=%s channel=%s): %s", what, env_id, channel, exc)
        except Exception:
            log.exception("slack: could not %s (env=%s channel=%s)", what, env_id, channel)
