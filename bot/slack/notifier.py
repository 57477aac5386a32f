"""The one place that writes to Slack: replies, the status card, milestones, credentials.

Why: every environment has a thread whose root is its status card, and several parties want to
say something there — the command handlers (through replies), the pipeline runner (through
`Events`), the scheduler. None of them may wait on Slack, and what they say must arrive even if
Slack is away for a while or this process dies. So each of them only *adds a row* to the
outbox (`bot.store.outbox`, one short transaction) and returns; the outbox's drainer
(`bot.slack.outbox`, in every replica) sends the rows, and calls back here to turn each row
into Slack calls at the moment it is sent:

- the card is rendered from the store when it is sent, never before, and not sent at all when
  Slack already shows exactly that render (a digest per environment, `slack_cards`): so the
  newest state always wins and a change is sent once;
- a thread reply is posted under the card, posting the card first as the thread's root when
  there is none yet; an environment-level milestone (ready, failed, destroyed) mentions the
  owner, because a card edit notifies nobody;
- credentials are never in a row: the row says "the credentials of environment N", and they
  are derived again (`bot.ports.CredentialsSource`) when sent. They go to the owner alone, as an
  ephemeral message in the channel and as a direct message. Both, deliberately: an ephemeral
  message reaches only someone active in Slack right now and vanishes on reload, so on its own
  an owner away at the moment of `ready` would never get them; the direct message stays where
  the owner can find it again (`/ephem creds` says them again too);
- an ephemeral answer that cannot reach the person (Ephem is not in the channel) goes through
  the command's `response_url`, which works without membership, and else as a direct message;
- a button on a message other than the card (the expiry reminder) is replaced, once used, by
  what happened, so it cannot be clicked again;
- the scheduler's messages (reminders, in the thread and as a direct message; the expiry
  notice; reconciliation's reports) are rows it adds in its own transaction (`thread_row`,
  `direct_row`, `post_row`, then `added`), so they commit with the decision to send them.

It also answers `bot.ports.ChannelAccess` for the handlers: whether Ephem is in a channel, so a
create in a channel where nobody could follow it is refused before anything exists.

Neighbours: `bot.slack.blocks` and `bot.slack.messages` render, `bot.slack.writer` makes the
calls, `bot.slack.outbox` paces and retries them, `bot.store` holds the state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import approvals
from bot.domain import PhaseName, ProgressEvent
from bot.ports import CredentialsSource, Invocation, Reply, Visibility
from bot.slack import messages
from bot.slack.approval_card import approval_card, approval_card_text, approval_view
from bot.slack.blocks import button_used, card_view, status_card, status_card_text
from bot.slack.home import build_home
from bot.slack.outbox import Drainer, OutboxTiming, Sent, user_queue
from bot.slack.writer import UNREACHABLE, SlackUnavailable, SlackWriteError, SlackWriter
from bot.store import Store, repo
from bot.store import outbox as rows
from bot.store.models import ApprovalRequest, Environment, SlackOutbox
from bot.store.outbox import Entry

log = logging.getLogger(__name__)

# Kinds of outbox rows.
CARD = rows.CARD  # render the environment's card and show it (posting it as the root if new)
THREAD = "thread"  # a reply in the environment's thread
POST = "post"  # a message in a channel, or in a thread that is no environment's
EPHEMERAL = "ephemeral"  # a message only one person sees
CREDENTIALS = "credentials"  # an environment's credentials, derived when sent
REPLACE = "replace"  # a used reminder's buttons replaced by what happened
DIRECT = "direct"  # a direct message to one person (a reminder's copy for the owner)
APPROVAL = "approval"  # an approval request's card, rendered when sent, updated in place
MODAL = "modal"  # a modal opened for whoever clicked (its trigger lasts 3 seconds)
HOME = "home"  # a person's App Home tab, rendered from the store when sent

_LEGACY_PENDING = "pending:"  # a root claim marker older versions wrote into thread_ts
_MEMBER_SECONDS = 300.0  # how long "Ephem is in this channel" is believed
_MEMBER_CHECK_SECONDS = 3.0  # longest a command waits to learn it
_GROUP_SECONDS = 60.0  # how long a user group's members are believed


def _holder() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


def _root(env: Environment) -> str | None:
    ts = env.thread_ts
    return None if ts is None or ts.startswith(_LEGACY_PENDING) else ts


def _digest(text: str, blocks: Sequence[Mapping[str, Any]]) -> str:
    body = json.dumps([text, list(blocks)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def _blocks(blocks: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    return [dict(b) for b in blocks] if blocks else None


class Notifier:
    """Implements `bot.ports.Events` and `bot.ports.ChannelAccess`; delivers handler replies."""

    def __init__(
        self, store: Store, writer: SlackWriter, *, timing: OutboxTiming | None = None,
        credentials: CredentialsSource | None = None, credentials_by_dm: bool = True,
        holder: str | None = None,
    ) -> None:
        self._store = store
        self._writer = writer
        self.credentials = credentials  # plugged in by the composition root
        self._by_dm = credentials_by_dm
        self._drainer = Drainer(store, self._send, holder=holder or _holder(),
                                timing=timing or OutboxTiming())
        self._mine: set[int] = set()
        self._members: dict[str, float] = {}
        self._asking: dict[str, asyncio.Task[bool | None]] = {}
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._closed = False
        # What the card says the environment costs (`bot.cost`); plugged in by the
        # composition root, None: no cost on the card.
        self.cost: Callable[[Environment], str | None] | None = None

    def start(self) -> None:
        """Start sending the outbox from this process (adding a row also starts it)."""
        if not self._closed:
            self._drainer.start()

    # ----------------------------------------------------------------------- Events

    async def progress(self, event: ProgressEvent) -> None:
        """Ask for the card to be refreshed; a milestone's detail also goes in the thread."""
        added = []
        async with self._store.transaction() as s:
            env = await repo.get_environment(s, event.env_id)
            if event.milestone and event.detail:
                added.append(await rows.add(
                    s, queue=env.channel_id, kind=THREAD, env_id=env.id,
                    payload={"text": event.detail, "mention_owner": event.phase is None}))
            added.append(await rows.request_card(s, queue=env.channel_id, env_id=env.id))
            if event.phase is None:  # the job started or ended: the owner's Home changed
                added += await self._request_home(s, env.owner_id)
        self._added(added)

    async def credentials_ready(self, env_id: int, phase: PhaseName) -> None:
        async with self._store.transaction() as s:
            env = await repo.get_environment(s, env_id)
            added = await self._add_credentials(s, env, channel=env.channel_id,
                                                phase=phase, by_dm=self._by_dm)
        self._added(added)

    # ----------------------------------------------------------------------- replies

    async def deliver(self, inv: Invocation, replies: Sequence[Reply]) -> list[int]:
        """Queue each reply where its visibility says; the outbox rows added (to `flush`). A
        failure is logged, never raised."""
        added: list[int] = []
        if not replies:
            return added
        with self._guard("queue replies", channel=inv.channel_id):
            async with self._store.transaction() as s:
                for reply in replies:
                    added += await self._add_reply(s, inv, reply)
            self._added(added)
        return added

    async def refresh_card(self, env_id: int) -> None:
        """Ask for the card to be rendered from the store and shown (posted if there is none)."""
        async with self._store.transaction() as s:
            env = await repo.get_environment(s, env_id)
            added = await rows.request_card(s, queue=env.channel_id, env_id=env.id)
        self._added([added])

    async def publish_home(self, user: str) -> None:
        """Ask for `user`'s App Home tab to be rendered from the store and published."""
        with self._guard("queue a home tab"):
            async with self._store.transaction() as s:
                added = await self._request_home(s, user)
            self._added(added)

    async def _request_home(self, s: AsyncSession, user: str) -> list[int]:
        """One home row per person waits at a time: it is rendered when sent, so asking again
        bumps its revision (a sender that rendered it before this change sends it again)."""
        queue = user_queue(user)
        waiting = await s.scalar(
            update(SlackOutbox).where(SlackOutbox.queue == queue, SlackOutbox.kind == HOME)
            .values(revision=SlackOutbox.revision + 1).returning(SlackOutbox.id))
        if waiting is not None:
            return [int(waiting)]
        return [await rows.add(s, queue=queue, kind=HOME, payload={"user": user})]

    async def _add_approval(self, s: AsyncSession, approval_id: int) -> list[int]:
        """The request's card, and the Home of everyone it concerns."""
        request = await approvals.get(s, approval_id)
        if request is None:
            return []
        added = [await rows.add(s, queue=request.card_channel, kind=APPROVAL,
                                env_id=request.env_id, payload={"request": approval_id})]
        people = {request.requester_id, *request.approvers}
        if request.usergroup is not None:
            people |= self._known_members(request.usergroup)
        for user in sorted(people):
            added += await self._request_home(s, user)
        return added

    async def _add_reply(self, s: AsyncSession, inv: Invocation, reply: Reply) -> list[int]:
        text, blocks, visibility = reply.text, _blocks(reply.blocks), reply.visibility
        if visibility is Visibility.APPROVAL:
            return await self._add_approval(s, reply.approval_id) if reply.approval_id else []
        if visibility is Visibility.MODAL:
            if not inv.trigger_id or not reply.blocks:
                return []
            return [await rows.add(s, queue=user_queue(inv.user_id), kind=MODAL, payload={
                "trigger_id": inv.trigger_id, "view": dict(reply.blocks[0])})]
        if reply.env_id is None and visibility is not Visibility.CHANNEL:
            # No environment to attach to: answer where the person asked.
            if visibility is Visibility.THREAD and inv.thread_ts:
                return [await rows.add(s, queue=inv.channel_id, kind=POST, payload={
                    "channel": inv.channel_id, "text": text, "blocks": blocks,
                    "thread_ts": inv.thread_ts})]
            visibility = Visibility.EPHEMERAL
        match visibility:
            case Visibility.EPHEMERAL:
                return [await rows.add(s, queue=user_queue(inv.user_id), kind=EPHEMERAL,
                                       payload={"channel": inv.channel_id, "user": inv.user_id,
                                                "text": text, "blocks": blocks,
                                                "response_url": inv.response_url})]
            case Visibility.CHANNEL:
                return [await rows.add(s, queue=inv.channel_id, kind=POST, payload={
                    "channel": inv.channel_id, "text": text, "blocks": blocks})]
        assert reply.env_id is not None
        env = await repo.get_environment(s, reply.env_id)
        match visibility:
            case Visibility.THREAD:
                added = [await rows.add(s, queue=env.channel_id, kind=THREAD, env_id=env.id,
                                        payload={"text": text, "blocks": blocks})]
                if inv.source == "button" and inv.message_ts and reply.replace_message:
                    added.append(await rows.add(s, queue=inv.channel_id, kind=REPLACE,
                                                env_id=env.id, payload={
                                                    "channel": inv.channel_id,
                                                    "ts": inv.message_ts, "text": text}))
                # The reply may follow a change the card and the owner's Home show (an
                # extended expiry): both are rendered from the store when sent.
                added.append(await rows.request_card(s, queue=env.channel_id, env_id=env.id))
                added += await self._request_home(s, env.owner_id)
                return added
            case Visibility.OWNER:
                return [await rows.add(s, queue=user_queue(env.owner_id), kind=EPHEMERAL,
                                       env_id=env.id, payload={
                                           "channel": env.channel_id, "user": env.owner_id,
                                           "text": text, "blocks": blocks})]
            case _:  # CREDENTIALS: to the owner only, whoever asked
                channel = inv.channel_id if inv.user_id == env.owner_id else env.channel_id
                return await self._add_credentials(s, env, channel=channel, phase=None,
                                                   by_dm=False)

    async def _add_credentials(self, s: AsyncSession, env: Environment, *, channel: str,
                               phase: PhaseName | None, by_dm: bool) -> list[int]:
        """Rows naming the credentials, never holding them: an ephemeral message to the owner
        in `channel` and, with `by_dm`, a direct message (else the DM is only the fallback)."""
        queue = user_queue(env.owner_id)
        base = {"phase": str(phase) if phase else None, "user": env.owner_id,
                "channel": channel}
        added = [await rows.add(s, queue=queue, kind=CREDENTIALS, env_id=env.id, payload={
            **base, "via": EPHEMERAL, "copied": by_dm})]
        if by_dm:
            added.append(await rows.add(s, queue=queue, kind=CREDENTIALS, env_id=env.id,
                                        payload={**base, "via": "direct"}))
        return added

    # ----------------------------------------------------------------------- rows for a
    # transaction someone else holds (the scheduler's): they commit with its decision
    # (`bot.store.outbox.add_many`), and `added` has them sent once it committed.

    @staticmethod
    def thread_row(env: Environment, text: str, *,
                   blocks: Sequence[Mapping[str, Any]] | None = None) -> rows.NewRow:
        return rows.NewRow(queue=env.channel_id, kind=THREAD, env_id=env.id,
                           payload={"text": text, "blocks": _blocks(blocks)})

    @staticmethod
    def direct_row(user: str, text: str, *, blocks: Sequence[Mapping[str, Any]] | None = None,
                   env_id: int | None = None) -> rows.NewRow:
        return rows.NewRow(queue=user_queue(user), kind=DIRECT, env_id=env_id,
                           payload={"user": user, "text": text, "blocks": _blocks(blocks)})

    @staticmethod
    def post_row(channel: str, text: str) -> rows.NewRow:
        return rows.NewRow(queue=channel, kind=POST, payload={"channel": channel, "text": text})

    def added(self, ids: Sequence[int]) -> None:
        """Rows were committed: send them now (any replica would, later)."""
        self._added(ids)

    # ----------------------------------------------------------------------- waiting

    def _added(self, ids: Sequence[int]) -> None:
        self._mine.update(ids)
        if not self._closed:
            self._drainer.start()
            self._drainer.wake()

    async def flush(self, timeout: float | None = None, *, only: Iterable[int] | None = None
                    ) -> bool:
        """Wait until every row this process added (or those of them in `only`) has been sent
        (by any replica) or dropped; False if some still wait after `timeout` seconds (Slack
        away)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        subset = None if only is None else set(only)
        while wanted := set(self._mine) if subset is None else self._mine & subset:
            async with self._store.transaction() as s:
                left = await rows.waiting(s, wanted)
            self._mine -= wanted - left
            if not left:
                continue  # without `only`, rows added meanwhile are waited for too
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await self._drainer.progress(0.1)
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Let this process's rows go out for up to `timeout` seconds, then stop sending; what
        is left stays in the outbox for another replica (or the next start)."""
        if not await self.flush(timeout):
            log.warning("slack: %d write(s) not sent yet; they stay in the outbox and are sent "
                        "by another replica or after the next start", len(self._mine))
        self._closed = True
        await self._drainer.stop()

    # ----------------------------------------------------------------------- ChannelAccess

    async def can_post(self, channel_id: str) -> bool | None:
        """`bot.ports.ChannelAccess`: asks Slack once per channel (and again after a while);
        None when Slack does not answer in time."""
        known = self._members.get(channel_id)
        if known is not None and time.monotonic() - known < _MEMBER_SECONDS:
            return True
        asking = self._asking.get(channel_id)
        if asking is None:
            asking = asyncio.get_running_loop().create_task(self._writer.can_post(channel_id))
            self._asking[channel_id] = asking
            asking.add_done_callback(lambda _: self._asking.pop(channel_id, None))
        try:
            member = await asyncio.wait_for(asyncio.shield(asking), _MEMBER_CHECK_SECONDS)
        except TimeoutError:
            return None
        except Exception:
            log.exception("slack: could not tell whether Ephem is in %s", channel_id)
            return None
        if member:
            self._members[channel_id] = time.monotonic()
        return member

    # ----------------------------------------------------------------------- ApproverDirectory

    def _known_members(self, usergroup: str) -> frozenset[str]:
        known = self._groups.get(usergroup)
        return known[1] if known is not None else frozenset()

    async def usergroup_members(self, usergroup: str) -> frozenset[str] | None:
        """`bot.ports.ApproverDirectory`: asks Slack (`usergroups.users.list`), and believes
        the answer for a minute; None when Slack does not answer in time."""
        known = self._groups.get(usergroup)
        if known is not None and time.monotonic() - known[0] < _GROUP_SECONDS:
            return known[1]
        try:
            members = await asyncio.wait_for(self._writer.usergroup_members(usergroup),
                                             _MEMBER_CHECK_SECONDS)
        except TimeoutError:
            return None
        except Exception as exc:
            log.warning("slack: could not read the members of user group %s (%s)", usergroup,
                        getattr(exc, "reason", type(exc).__name__))
            return None
        self._groups[usergroup] = (time.monotonic(), members)
        return members

    # ----------------------------------------------------------------------- sending

    async def _send(self, entry: Entry) -> Sent:
        """The outbox's `Deliver`: turn one row into Slack calls, now."""
        p = entry.payload
        match entry.kind:
            case rows.CARD:
                return await self._send_card(entry)
            case "thread":
                return await self._send_thread(entry)
            case "post":
                await self._writer.post_message(p["channel"], text=p["text"],
                                                blocks=p.get("blocks"),
                                                thread_ts=p.get("thread_ts"))
                return Sent.DONE
            case "ephemeral":
                await self._send_ephemeral(p)
                return Sent.DONE
            case "credentials":
                return await self._send_credentials(entry)
            case "replace":
                return await self._send_replace(entry)
            case "direct":
                await self._writer.post_direct(str(p["user"]), text=str(p["text"]),
                                               blocks=p.get("blocks"))
                return Sent.DONE
            case "approval":
                return await self._send_approval(entry)
            case "modal":
                await self._writer.open_view(str(p["trigger_id"]), p["view"])
                return Sent.DONE
            case "home":
                async with self._store.transaction() as s:
                    view = await build_home(s, str(p["user"]), self, self.cost)
                await self._writer.publish_view(str(p["user"]), view)
                return Sent.DONE
        raise SlackWriteError("outbox", f"unknown kind {entry.kind!r}")

    async def _environment(self, env_id: int | None) -> Environment:
        assert env_id is not None
        async with self._store.transaction() as s:
            return await repo.get_environment(s, env_id)

    async def _render_card(self, env_id: int) -> tuple[Environment, str, list[dict[str, Any]],
                                                       str | None]:
        async with self._store.transaction() as s:
            env = await repo.get_environment(s, env_id)
            view = card_view(env, await repo.latest_phase_runs(s, env_id),
                             cost=self.cost(env) if self.cost is not None else None)
            waiting = await approvals.waiting_on(s, env_id)
            if waiting is not None:
                who = messages.approvers_phrase(waiting.approvers, waiting.usergroup,
                                                waiting.required)
                view = dataclasses.replace(view, waiting=messages.approval_waiting(
                    waiting.id, who=who, expires=messages.slack_date(waiting.expires_at)))
            shown = await rows.card_digest(s, env_id)
        return env, status_card_text(view), status_card(view), shown

    async def _post_root(self, env: Environment, text: str, blocks: list[dict[str, Any]]) -> str:
        ts = await self._writer.post_message(env.channel_id, text=text, blocks=blocks)
        async with self._store.transaction() as s:
            result = await s.execute(
                update(Environment)
                .where(Environment.id == env.id,
                       or_(Environment.thread_ts.is_(None),
                           Environment.thread_ts.startswith(_LEGACY_PENDING)))
                .values(thread_ts=ts))
            if int(result.rowcount) != 1:  # type: ignore[attr-defined]
                log.warning("slack: environment %s already had a thread; a second card was "
                            "posted (a queue's sender outlived its lease)", env.id)
            await rows.card_sent(s, env.id, _digest(text, blocks))
        return ts

    async def _send_card(self, entry: Entry) -> Sent:
        assert entry.env_id is not None
        env, text, blocks, shown = await self._render_card(entry.env_id)
        root = _root(env)
        if root is None:
            await self._post_root(env, text, blocks)
            return Sent.DONE
        digest = _digest(text, blocks)
        if digest == shown:
            return Sent.NOTHING
        await self._writer.update_message(env.channel_id, root, text=text, blocks=blocks)
        async with self._store.transaction() as s:
            await rows.card_sent(s, env.id, digest)
        return Sent.DONE

    async def _send_thread(self, entry: Entry) -> Sent:
        assert entry.env_id is not None
        env, card_text, card_blocks, _ = await self._render_card(entry.env_id)
        root = _root(env)
        if root is None:
            await self._post_root(env, card_text, card_blocks)
            return Sent.AGAIN  # the reply itself goes at the queue's next slot
        p = entry.payload
        text = str(p["text"])
        if p.get("mention_owner"):
            text = messages.to_owner(env.owner_id, text)
        await self._writer.post_message(env.channel_id, text=text, blocks=p.get("blocks"),
                                        thread_ts=root)
        return Sent.DONE

    async def _send_ephemeral(self, p: Mapping[str, Any]) -> None:
        user, text, blocks = str(p["user"]), str(p["text"]), p.get("blocks")
        try:
            await self._writer.post_ephemeral(str(p["channel"]), user, text=text, blocks=blocks)
            return
        except SlackUnavailable:
            raise
        except SlackWriteError as exc:
            if exc.reason not in UNREACHABLE:
                raise
            log.info("slack: an ephemeral message cannot reach %s in %s (%s)", user,
                     p["channel"], exc.reason)
        if p.get("response_url"):
            try:
                await self._writer.respond(str(p["response_url"]), text=text, blocks=blocks)
                return
            except SlackUnavailable:
                raise
            except SlackWriteError as exc:
                log.info("slack: the response URL did not take it either (%s)", exc.reason)
        await self._writer.post_direct(user, text=text, blocks=blocks)

    async def _send_credentials(self, entry: Entry) -> Sent:
        if self.credentials is None or entry.env_id is None:
            raise SlackWriteError("credentials", "no credentials source is configured")
        p = entry.payload
        found = await self.credentials.credentials(entry.env_id)
        phase = p.get("phase")
        said = {k: dict(v) for k, v in found.items() if v and (phase is None or k == phase)}
        if not said:
            log.info("slack: environment %s has no credentials to deliver (any more)",
                     entry.env_id)
            return Sent.NOTHING
        env = await self._environment(entry.env_id)
        user = str(p["user"])
        if p.get("via") == "direct":
            await self._writer.post_direct(
                user, text=messages.credentials(env.name, said, direct=True), secret=True)
            return Sent.DONE
        copied = bool(p.get("copied"))
        try:
            await self._writer.post_ephemeral(
                str(p["channel"]), user, secret=True,
                text=messages.credentials(env.name, said, copied=copied))
        except SlackUnavailable:
            raise
        except SlackWriteError as exc:
            if exc.reason not in UNREACHABLE:
                raise
            if copied:  # the direct message, next in this queue, carries them
                log.info("slack: credentials cannot reach %s in %s (%s); the direct message "
                         "has them", user, p["channel"], exc.reason)
                return Sent.DONE
            await self._writer.post_direct(
                user, text=messages.credentials(env.name, said, direct=True), secret=True)
        return Sent.DONE

    async def _send_approval(self, entry: Entry) -> Sent:
        request_id = int(entry.payload["request"])
        async with self._store.transaction() as s:
            request = await approvals.get(s, request_id)
            if request is None:
                return Sent.NOTHING
            env = await repo.get_environment(s, request.env_id)
            view = approval_view(request, env, await approvals.votes(s, request.id))
        text, blocks = approval_card_text(view), approval_card(view)
        if request.card_ts is None:
            channel = request.card_channel
            try:
                ts = await self._writer.post_message(channel, text=text, blocks=blocks)
            except SlackUnavailable:
                raise
            except SlackWriteError as exc:
                if exc.reason not in UNREACHABLE or channel == env.channel_id:
                    raise
                # The approvals channel is gone or Ephem is not in it: the request must not
                # wait unseen, so its card goes where the requester asked instead.
                log.warning("slack: the approvals channel %s cannot take request %s's card "
                            "(%s); posting it in %s instead", channel, request_id, exc.reason,
                            env.channel_id)
                channel = env.channel_id
                ts = await self._writer.post_message(channel, text=text, blocks=blocks)
            async with self._store.transaction() as s:
                await s.execute(update(ApprovalRequest)
                                .where(ApprovalRequest.id == request_id,
                                       ApprovalRequest.card_ts.is_(None))
                                .values(card_ts=ts, card_channel=channel))
            return Sent.DONE
        await self._writer.update_message(request.card_channel, request.card_ts, text=text,
                                          blocks=blocks)
        return Sent.DONE

    async def _send_replace(self, entry: Entry) -> Sent:
        p = entry.payload
        if entry.env_id is not None:
            env = await self._environment(entry.env_id)
            if _root(env) == p["ts"]:
                return Sent.NOTHING  # the card: it is rendered from the store, buttons included
        text = str(p["text"])
        await self._writer.update_message(str(p["channel"]), str(p["ts"]), text=text,
                                          blocks=button_used(text))
        return Sent.DONE

    # ----------------------------------------------------------------------- failures

    @contextmanager
    def _guard(self, what: str, *, env_id: int | None = None,
               channel: str | None = None) -> Iterator[None]:
        """Log a failure with its context — never a text — and carry on."""
        try:
            yield
        except Exception:
            log.exception("slack: could not %s (env=%s channel=%s)", what, env_id, channel)
