"""What the scheduler and reconciliation say, as outbox rows for their own transactions.

Why a module: the scheduler decides *when* (a reminder is due, an environment expired, an
orphan was found) and must write the message in the same transaction as the decision, so that a
crash between the two loses nothing and sends nothing twice. This module decides *what*: the
texts (`bot.slack.messages`), the buttons (`bot.slack.blocks`), the cost (`bot.cost`) and where
each goes — a reminder to the owner in the environment's thread and as a direct message, an
orphan report in the operators' channel. It returns the rows; the caller adds them in its
transaction. Nothing here waits on Slack or touches the database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from bot import cost
from bot.config import Blueprint
from bot.domain import format_duration
from bot.slack import messages
from bot.slack.blocks import reminder_blocks
from bot.slack.notifier import Notifier
from bot.store.models import Environment
from bot.store.outbox import NewRow

log = logging.getLogger(__name__)

EXTEND_CHOICES = (timedelta(days=1), timedelta(days=3), timedelta(days=7))


def extend_choices(blueprint: Blueprint, env: Environment, now: datetime) -> list[str]:
    """The Extend… menu: 1d, 3d, 7d, those that keep the environment within `max_ttl` of now."""
    room = blueprint.defaults.max_ttl - max(env.expires_at - now, timedelta(0))
    return [format_duration(c) for c in EXTEND_CHOICES if c <= room]


class LifecycleAnnouncer:
    """Implements `bot.scheduler.Announcer` and `bot.reconcile.Reporter`."""

    def __init__(self, notifier: Notifier, blueprint: Blueprint) -> None:
        self.notifier = notifier
        self.blueprint = blueprint

    def cost_of(self, env: Environment, now: datetime) -> str | None:
        return cost.describe(cost.estimate(env, self.blueprint, now))

    def reminder(self, env: Environment, *, last: bool, now: datetime) -> Sequence[NewRow]:
        text = messages.reminder(env.name, owner_id=env.owner_id, left=env.expires_at - now,
                                 expires=messages.slack_date(env.expires_at),
                                 cost=self.cost_of(env, now), last=last)
        blocks = reminder_blocks(env.name, text, extend_choices(self.blueprint, env, now),
                                 expires=int(env.expires_at.timestamp()))
        return [self.notifier.thread_row(env, text, blocks=blocks),
                self.notifier.direct_row(env.owner_id, text, blocks=blocks, env_id=env.id)]

    def expired(self, env: Environment, *, now: datetime) -> Sequence[NewRow]:
        text = messages.expired(env.name, lived=cost.lived(env, now),
                                cost=self.cost_of(env, now))
        return [self.notifier.thread_row(env, text)]

    def operators(self, text: str) -> Sequence[NewRow]:
        """A report for the operators' channel (`channels.operators`); the log without one."""
        channel = self.blueprint.channels.operators
        if channel is None:
            log.warning("reconciliation (no channels.operators to tell): %s", text)
            return []
        return [self.notifier.post_row(channel, text)]

    def added(self, ids: Sequence[int]) -> None:
        self.notifier.added(ids)
