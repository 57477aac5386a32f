"""Queries over the Slack outbox: what waits to be written to Slack, and who sends which queue.

Why a module of its own: the outbox is a small protocol between replicas, and every step of it
is one short statement that must be right under concurrency — adding a row (or coalescing a
card request into the pending one), claiming a queue, taking the next paced slot, and settling
a row after Slack answered. `bot.slack.outbox` decides *when* to call these; this module holds
*how*, and nothing here talks to Slack. Like `bot.store.repo`, functions flush and never commit.

A queue is a channel (paced: Slack accepts about one message a second per channel) or one
person's private messages (`user:<id>`: ephemeral answers and direct messages). `slack_queues`
keeps, per queue, the earliest time the next write may go (`next_at`: the pace, a Retry-After,
a backoff) and its sender (`holder` until `held_until`), so that across replicas one process
at a time sends a queue, in order, at Slack's pace.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from bot.store.models import OUTBOX_POSITION, SlackCard, SlackOutbox, SlackQueue

CARD = "card"


@dataclass(frozen=True)
class Entry:
    """One outbox row as its sender reads it."""

    id: int
    queue: str
    kind: str
    env_id: int | None
    payload: Mapping[str, Any]
    revision: int
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Turn:
    """What a queue's sender may do next. `held` False: the queue is no longer this sender's.
    `entry` None: the queue is empty. Else `slot` True: send `entry` now (the slot is taken);
    `slot` False: not before `wait` seconds."""

    held: bool
    entry: Entry | None = None
    slot: bool = False
    wait: float = 0.0
    age: float = 0.0  # seconds since `entry` was added


async def _ensure_queue(s: AsyncSession, queue: str) -> None:
    await s.execute(insert(SlackQueue).values(queue=queue).on_conflict_do_nothing())


async def add(s: AsyncSession, *, queue: str, kind: str, payload: Mapping[str, Any],
              env_id: int | None = None) -> int:
    """Queue one write; returns its id."""
    await _ensure_queue(s, queue)
    row = SlackOutbox(queue=queue, kind=kind, env_id=env_id, payload=dict(payload))
    s.add(row)
    await s.flush()
    return row.id


@dataclass(frozen=True)
class NewRow:
    """A write to add, for `add_many`."""

    queue: str
    kind: str
    payload: Mapping[str, Any]
    env_id: int | None = None


async def add_many(s: AsyncSession, new: Sequence[NewRow]) -> list[int]:
    """Queue many writes in two statements (their queues, then the rows, in the order given,
    which is their order within each queue); returns their ids."""
    if not new:
        return []
    queues = sorted({r.queue for r in new})
    await s.execute(insert(SlackQueue).values([{"queue": q} for q in queues])
                    .on_conflict_do_nothing())
    added = await s.execute(insert(SlackOutbox).values([
        {"queue": r.queue, "kind": r.kind, "env_id": r.env_id, "payload": dict(r.payload)}
        for r in new]).returning(SlackOutbox.id))
    return [int(i) for i in added.scalars().all()]


async def request_card(s: AsyncSession, *, queue: str, env_id: int) -> int:
    """Ask for the environment's card to be rendered and sent; returns the request's id.

    At most one card request per environment waits: asking again while one waits bumps its
    `revision` (so a sender that rendered before the bump sends again) and keeps its place.
    """
    await _ensure_queue(s, queue)
    upsert = insert(SlackOutbox).values(queue=queue, kind=CARD, env_id=env_id, payload={})
    stmt = upsert.on_conflict_do_update(
        index_elements=[SlackOutbox.env_id], index_where=text("kind = 'card'"),
        set_={"revision": SlackOutbox.revision + 1},
    ).returning(SlackOutbox.id)
    return int((await s.execute(stmt)).scalar_one())


async def claim_queues(s: AsyncSession, *, holder: str, lease: float, limit: int) -> list[str]:
    """Take up to `limit` queues that have work, are due and have no live sender."""
    if limit <= 0:
        return []
    stmt = text("""
        UPDATE slack_queues SET holder = :holder,
               held_until = now() + make_interval(secs => :lease)
        WHERE queue IN (
            SELECT q.queue FROM slack_queues q
            WHERE (q.holder IS NULL OR q.held_until < now()) AND q.next_at <= now()
              AND EXISTS (SELECT 1 FROM slack_outbox o WHERE o.queue = q.queue)
            ORDER BY q.next_at
            LIMIT :limit
            FOR UPDATE SKIP LOCKED)
        RETURNING queue
    """)
    result = await s.execute(stmt, {"holder": holder, "lease": lease, "limit": limit})
    return [str(q) for q in result.scalars().all()]


async def next_turn(s: AsyncSession, *, queue: str, holder: str, lease: float,
                    interval: float) -> Turn:
    """The queue's next row and, when it is due, its slot: taking the slot renews the lease and
    opens the next slot `interval` seconds later (the pace).

    A new card request goes first: a card shows the state now, and in a busy channel a final
    state behind every other thread's replies would be seconds (or minutes) stale. A card
    asked for again (its `revision` moved: a running phase reporting progress) keeps its place
    instead, and once sent goes to the back (`settle`): else an environment whose progress
    comes faster than the pace would hold back every reply in its channel — its own thread's
    first ones included — until its job ended. Everything else goes in the order it was
    added, which keeps each thread in order.
    """
    row = (await s.execute(
        select(SlackQueue.holder, SlackQueue.held_until, SlackQueue.next_at,
               func.now().label("now"))
        .where(SlackQueue.queue == queue)
        .with_for_update()
    )).one_or_none()
    if row is None or row.holder != holder or row.held_until is None or row.held_until < row.now:
        return Turn(held=False)
    now: datetime = row.now
    first = (await s.execute(
        select(SlackOutbox).where(SlackOutbox.queue == queue)
        .order_by(or_(SlackOutbox.kind != CARD, SlackOutbox.revision > 0),
                  SlackOutbox.position).limit(1)
    )).scalar_one_or_none()
    if first is None:
        return Turn(held=True)
    entry = Entry(id=first.id, queue=first.queue, kind=first.kind, env_id=first.env_id,
                  payload=dict(first.payload), revision=first.revision,
                  attempts=first.attempts, created_at=first.created_at)
    age = (now - first.created_at).total_seconds()
    if row.next_at > now:
        return Turn(held=True, entry=entry, wait=(row.next_at - now).total_seconds(), age=age)
    await s.execute(text("""
        UPDATE slack_queues
        SET next_at = now() + make_interval(secs => :interval),
            held_until = now() + make_interval(secs => :lease)
        WHERE queue = :queue
    """), {"queue": queue, "lease": lease, "interval": interval})
    return Turn(held=True, entry=entry, slot=True, age=age)


async def give_back_slot(s: AsyncSession, *, queue: str, holder: str) -> None:
    """The slot taken was not used (nothing needed sending): open the next one now."""
    await s.execute(update(SlackQueue)
                    .where(SlackQueue.queue == queue, SlackQueue.holder == holder)
                    .values(next_at=func.now()))


async def settle(s: AsyncSession, entry: Entry) -> bool:
    """The row was sent. Remove it — unless it is a card asked for again meanwhile (its
    revision moved): then it goes to the back of its queue, to be rendered and sent again after
    the other rows waiting there. True if the row is gone."""
    gone = (await s.execute(
        delete(SlackOutbox)
        .where(SlackOutbox.id == entry.id, SlackOutbox.revision == entry.revision)
        .returning(SlackOutbox.id)
    )).scalar_one_or_none()
    if gone is not None:
        return True
    await s.execute(update(SlackOutbox).where(SlackOutbox.id == entry.id)
                    .values(position=OUTBOX_POSITION.next_value(), attempts=0,
                            last_error=None))
    return False


async def postpone(s: AsyncSession, entry: Entry, *, holder: str, delay: float, error: str,
                   count: bool) -> None:
    """Slack did not take the row now: nothing in its queue goes before `delay` seconds.
    `count` False for a rate limit, which is Slack saying when, not a failed attempt."""
    await s.execute(update(SlackOutbox).where(SlackOutbox.id == entry.id).values(
        attempts=SlackOutbox.attempts + (1 if count else 0), last_error=error[:500]))
    await s.execute(text("""
        UPDATE slack_queues
        SET next_at = greatest(next_at, now() + make_interval(secs => :delay))
        WHERE queue = :queue AND holder = :holder
    """), {"queue": entry.queue, "holder": holder, "delay": delay})


async def drop(s: AsyncSession, entry_id: int) -> None:
    await s.execute(delete(SlackOutbox).where(SlackOutbox.id == entry_id))


async def release(s: AsyncSession, *, queue: str, holder: str, only_if_empty: bool) -> bool:
    """Stop sending the queue (another replica, or this one later, takes it up when it is due).
    With `only_if_empty`, only when nothing waits in it: a row added meanwhile keeps it held."""
    stmt = (update(SlackQueue)
            .where(SlackQueue.queue == queue, SlackQueue.holder == holder)
            .values(holder=None, held_until=None))
    if only_if_empty:
        stmt = stmt.where(~select(SlackOutbox.id).where(SlackOutbox.queue == queue).exists())
    result = await s.execute(stmt.returning(SlackQueue.queue))
    return result.scalar_one_or_none() is not None


async def release_all(s: AsyncSession, *, holder: str) -> None:
    await s.execute(update(SlackQueue).where(SlackQueue.holder == holder)
                    .values(holder=None, held_until=None))


async def waiting(s: AsyncSession, ids: Collection[int]) -> set[int]:
    """Which of `ids` are still in the outbox."""
    if not ids:
        return set()
    found = await s.execute(select(SlackOutbox.id).where(SlackOutbox.id.in_(list(ids))))
    return set(found.scalars().all())


# --------------------------------------------------------------------------- what a card shows


async def card_digest(s: AsyncSession, env_id: int) -> str | None:
    return (await s.execute(select(SlackCard.digest).where(SlackCard.env_id == env_id))
            ).scalar_one_or_none()


async def card_sent(s: AsyncSession, env_id: int, digest: str) -> None:
    stmt = insert(SlackCard).values(env_id=env_id, digest=digest)
    await s.execute(stmt.on_conflict_do_update(
        index_elements=[SlackCard.env_id], set_={"digest": digest, "sent_at": func.now()}))
