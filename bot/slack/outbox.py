"""The outbox drainer: every write to Slack is a row first, sent by whichever replica is alive.

Why: Slack goes away (a minute-long outage, a storm of 429s) and replicas die, but a card that
says `ready`, a thread reply and an owner's credentials must still arrive once Slack answers.
So nothing that matters is sent from the coroutine that wanted it sent: the notifier adds a row
(`bot.store.outbox`) and returns, and a `Drainer` in every process sends rows until Slack has
taken them. A job never waits on Slack; a process that dies leaves its rows to the others.

Queues. Rows are grouped in queues: a channel (its thread posts, card updates and reminder
edits), or one person's private messages (`user:<id>`: ephemeral answers and direct messages).
One process at a time sends a queue — it *claims* it (`holder`, `held_until`: a lease, renewed
before every write, given back when the queue is empty) — and sends its rows one at a time in
order (new card requests first: see `bot.store.outbox.next_turn`). That is what keeps a thread in
order, and what makes the last card update win: the one
sender renders the card from the store right before sending it, and a card asked for again
while it was being rendered is sent again (its `revision` moved). No older render can land after
a newer one, from this process or another.

Pacing across replicas. Slack takes about one message a second per channel. Each queue row in
`slack_queues` holds `next_at`, the earliest the next write may go; taking a slot is one
`UPDATE … SET next_at = now() + pace WHERE next_at <= now() RETURNING`. Because the slot lives
in the database, two processes never post into one channel faster than the pace, and because
only the queue's holder takes its slots, no process keeps a database connection or lock while
it waits for one (an advisory lock held across the wait would pin a pooled connection per busy
channel; a slot reserved far ahead would be wasted by a process that dies). A 429's
Retry-After and the backoff after a failure move `next_at` too, for every replica.

Failures. A 429 is Slack saying when to come back, not a failed attempt: the queue waits
Retry-After and the attempt is not counted. A 5xx, a dropped connection, a token being replaced
is waited out with capped exponential backoff and tried again — for as long as `give_up_after`
(a day), not a number of attempts. An error Slack will repeat (`channel_not_found`,
`invalid_blocks`) drops the row with a log line; unexpected errors (a bug rendering a row) drop
it after a few tries. A row is sent at least once: a process frozen past its lease in the middle
of a call may see the call repeated by the next holder.

Neighbours: `bot.slack.notifier` adds rows and delivers each one (the `deliver` callback);
`bot.store.outbox` holds the SQL; `bot.slack.writer` makes the calls and sorts their failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from bot import logs, metrics
from bot.slack.writer import SlackUnavailable, SlackWriteError
from bot.store import Store
from bot.store import outbox as rows
from bot.store.outbox import Entry

log = logging.getLogger(__name__)

USER_QUEUE = "user:"
_UNEXPECTED_TRIES = 5


class Sent(Enum):
    """What delivering a row did."""

    DONE = "done"  # Slack took it
    NOTHING = "nothing"  # nothing needed sending (the card already shows this): slot unused
    AGAIN = "again"  # a first step landed (the thread's root); deliver the same row again


Deliver = Callable[[Entry], Awaitable[Sent]]


@dataclass(frozen=True)
class OutboxTiming:
    """How the outbox paces and retries; the defaults are for Slack itself."""

    pace: float = 1.0  # seconds between two writes into one channel, across replicas
    backoff_base: float = 1.0  # first wait after a failure; doubles each time
    backoff_cap: float = 20.0  # longest wait between two tries while Slack is away
    give_up_after: float = 86400.0  # a row older than this is dropped when a try fails
    lease: float = 30.0  # a queue's holder must renew within this (it does, every write)
    poll: float = 1.0  # how often to look for queues another process left or added to
    queues: int = 8  # queues one process sends at the same time

    def interval(self, queue: str) -> float:
        """Private messages are not paced per channel (Slack limits them per person)."""
        return 0.0 if queue.startswith(USER_QUEUE) else self.pace


def user_queue(user_id: str) -> str:
    return f"{USER_QUEUE}{user_id}"


class Drainer:
    """Sends the outbox's rows from this process, alongside any other replica's drainer."""

    def __init__(self, store: Store, deliver: Deliver, *, holder: str,
                 timing: OutboxTiming) -> None:
        self._store = store
        self._deliver = deliver
        self._holder = holder
        self._timing = timing
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._progressed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._poller is not None

    def start(self) -> None:
        """Start sending in the background (idempotent)."""
        if self._poller is None and not self._stopping:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name="ephem-outbox")

    def wake(self) -> None:
        """Something was added: look for work now rather than at the next poll."""
        self._wake.set()

    async def progress(self, timeout: float) -> None:
        """Wait until a row was settled (or `timeout` passed)."""
        self._progressed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progressed.wait(), timeout)

    async def stop(self) -> None:
        """Stop sending; give this process's queues back so another replica takes them now.
        A row whose call was cut off stays in the outbox and is sent again."""
        self._stopping = True
        tasks = [t for t in (self._poller, *self._active.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._poller = None
        try:
            async with self._store.transaction() as s:
                await rows.release_all(s, holder=self._holder)
        except Exception as exc:  # the database is going away too; the leases lapse
            log.warning("outbox: could not give back queues (%s)", type(exc).__name__)

    # ----------------------------------------------------------------------- the loops

    async def _poll(self) -> None:
        # `_stopping` is checked too, not only the cancellation: on 3.11, `asyncio.wait_for`
        # can swallow a cancel that lands as the wake event fires, and this loop then never
        # ended, so `stop()` waited for it forever (seen as a hung test teardown).
        while not self._stopping:
            self._wake.clear()
            free = self._timing.queues - len(self._active)
            if free > 0:
                try:
                    async with self._store.transaction() as s:
                        claimed = await rows.claim_queues(
                            s, holder=self._holder, lease=self._timing.lease, limit=free)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("outbox: could not look for work (%s); trying again in %.1fs",
                                type(exc).__name__, self._timing.poll)
                    claimed = []
                for queue in claimed:
                    self._active[queue] = asyncio.get_running_loop().create_task(
                        self._send_queue(queue), name=f"ephem-outbox-{queue}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timing.poll):
                    await self._wake.wait()

    async def _send_queue(self, queue: str) -> None:
        """Send the queue's rows in order until it is empty, must wait long, or is lost."""
        try:
            while True:
                async with self._store.transaction() as s:
                    turn = await rows.next_turn(s, queue=queue, holder=self._holder,
                                                lease=self._timing.lease,
                                                interval=self._timing.interval(queue))
                if not turn.held:
                    return
                if turn.entry is None:
                    async with self._store.transaction() as s:
                        if await rows.release(s, queue=queue, holder=self._holder,
                                              only_if_empty=True):
                            return
                    continue
                if turn.slot:
                    await self._attempt(turn.entry, age=turn.age)
                elif turn.wait > self._timing.lease / 3:
                    # A long Retry-After or backoff: let go; whoever polls when it is due (this
                    # process or another) takes the queue up again.
                    async with self._store.transaction() as s:
                        await rows.release(s, queue=queue, holder=self._holder,
                                           only_if_empty=False)
                    return
                else:
                    await asyncio.sleep(turn.wait)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox: sending queue %s stopped; its lease lapses and it is taken "
                          "up again", queue)
        finally:
            self._active.pop(queue, None)
            self._wake.set()

    async def _attempt(self, entry: Entry, *, age: float) -> None:
        with logs.bind(env_id=entry.env_id):
            await self._attempt_bound(entry, age=age)

    async def _attempt_bound(self, entry: Entry, *, age: float) -> None:
        try:
            sent = await self._deliver(entry)
        except SlackUnavailable as exc:
            await self._later(entry, exc, age=age)
            return
        except SlackWriteError as exc:
            metrics.SLACK_OUTBOX_DROPPED.labels(entry.kind, "refused").inc()
            log.warning("slack: dropped a %s write (env=%s queue=%s): %s", entry.kind,
                        entry.env_id, entry.queue, exc)
            async with self._store.transaction() as s:
                await rows.drop(s, entry.id)
            self._progressed.set()
            return
        except Exception as exc:
            tries = entry.attempts + 1
            log.exception("outbox: delivering a %s write (env=%s) failed unexpectedly "
                          "(try %d of %d)", entry.kind, entry.env_id, tries, _UNEXPECTED_TRIES)
            async with self._store.transaction() as s:
                if tries >= _UNEXPECTED_TRIES:
                    metrics.SLACK_OUTBOX_DROPPED.labels(entry.kind, "unexpected").inc()
                    await rows.drop(s, entry.id)
                else:
                    await rows.postpone(s, entry, holder=self._holder,
                                        delay=self._backoff(tries),
                                        error=type(exc).__name__, count=True)
            self._progressed.set()
            return
        if sent is Sent.AGAIN:
            return
        async with self._store.transaction() as s:
            await rows.settle(s, entry)
            if sent is Sent.NOTHING:
                await rows.give_back_slot(s, queue=entry.queue, holder=self._holder)
        self._progressed.set()

    async def _later(self, entry: Entry, exc: SlackUnavailable, *, age: float) -> None:
        rate_limited = exc.retry_after is not None
        reason = "ratelimited" if rate_limited else "unavailable"
        metrics.SLACK_API_RETRIES.labels(exc.method, reason).inc()
        if not rate_limited and age > self._timing.give_up_after:
            metrics.SLACK_OUTBOX_DROPPED.labels(entry.kind, "too_old").inc()
            log.error("slack: gave up a %s write (env=%s queue=%s) after %.0f s: %s",
                      entry.kind, entry.env_id, entry.queue, age, exc)
            async with self._store.transaction() as s:
                await rows.drop(s, entry.id)
            self._progressed.set()
            return
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            delay = self._backoff(entry.attempts + 1)
        log.info("slack: %s; %s queue %s waits %.1fs", exc, "rate limited:" if rate_limited
                 else "unavailable:", entry.queue, delay)
        async with self._store.transaction() as s:
            await rows.postpone(s, entry, holder=self._holder, delay=delay, error=exc.reason,
                                count=not rate_limited)

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter (half fixed, half random)."""
        t = self._timing
        ceiling = min(t.backoff_cap, t.backoff_base * 2.0 ** min(attempt - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)
