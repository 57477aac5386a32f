"""SQLAlchemy 2.0 models for the bot's state. The schema is owned by the Alembic migrations in
`bot/store/migrations`; a test compares the two so they cannot drift."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.domain import (
    ApprovalStatus,
    DataMode,
    EnvStatus,
    JobKind,
    JobStatus,
    PhaseAction,
    PhaseName,
    PhaseStatus,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(cls: type[Any], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dict[str, Any]: JSONB,
        datetime: DateTime(timezone=True),
    }


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class Environment(TimestampMixin, Base):
    __tablename__ = "environments"
    __table_args__ = (
        # One live environment per name; a destroyed one frees its name.
        Index(
            "uq_environments_live_name",
            "name",
            unique=True,
            postgresql_where=text("status <> 'destroyed'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    owner_id: Mapped[str] = mapped_column(String(64))
    channel_id: Mapped[str] = mapped_column(String(64))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[EnvStatus] = mapped_column(_enum(EnvStatus, "env_status"), index=True)
    reference: Mapped[str | None] = mapped_column(String(63))
    release_set: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    data_mode: Mapped[DataMode] = mapped_column(_enum(DataMode, "data_mode"))
    data_snapshot: Mapped[str | None] = mapped_column(String(63))
    reason: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    last_error: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    reminded_at: Mapped[datetime | None]  # the first reminder was decided (and queued)
    last_reminded_at: Mapped[datetime | None]  # the last reminder was decided (and queued)
    destroyed_at: Mapped[datetime | None]
    # The environment database's size (pg_database_size), measured by the scheduler; for cost.
    db_bytes: Mapped[int | None] = mapped_column(BigInteger)
    db_measured_at: Mapped[datetime | None] = mapped_column(index=True)


class Job(TimestampMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The database itself enforces "one running job per environment".
        Index(
            "uq_jobs_running_env",
            "env_id",
            unique=True,
            postgresql_where=text("status = 'running'"),
        ),
        Index("ix_jobs_claimable", "status", "run_after"),
        # The claim's "first in its environment's line" check (`bot.executor.claims`).
        Index(
            "ix_jobs_env_active",
            "env_id",
            "id",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    run_after: Mapped[datetime] = mapped_column(server_default=func.now())
    requested_by: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PhaseRun(Base):
    __tablename__ = "phase_runs"
    __table_args__ = (Index("ix_phase_runs_env_phase", "env_id", "phase", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    phase: Mapped[PhaseName] = mapped_column(_enum(PhaseName, "phase_name"))
    action: Mapped[PhaseAction] = mapped_column(_enum(PhaseAction, "phase_action"))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[PhaseStatus] = mapped_column(_enum(PhaseStatus, "phase_status"))
    detail: Mapped[str] = mapped_column(Text, server_default="")
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    outputs: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now(), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    env_id: Mapped[int | None] = mapped_column(
        ForeignKey("environments.id", ondelete="SET NULL"), index=True
    )
    details: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))


class SlackRequestSeen(Base):
    """Requests from Slack already accepted, so that a copy does nothing: a replayed command or
    click (by its signature, or its `action_ts`, user and message) and an event Slack retries
    (by its event id). Each row is kept until `keep_until`, then the scheduler drops it."""

    __tablename__ = "slack_requests_seen"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    keep_until: Mapped[datetime] = mapped_column(index=True)


OUTBOX_POSITION = Sequence("slack_outbox_position_seq", metadata=Base.metadata)


class SlackOutbox(Base):
    """A write to Slack that has not been taken by Slack yet (see `bot.slack.outbox`).

    Rows of one `queue` (a channel, or one person's private messages) go out one at a time in
    `position` order. A card row is rendered from the store when it is sent, so it holds no
    text; there is at most one per environment, and asking for the card again bumps `revision`
    instead of adding a row. Credentials rows hold which environment and phase, never a secret.
    """

    __tablename__ = "slack_outbox"
    __table_args__ = (
        Index("ix_slack_outbox_queue_position", "queue", "position"),
        Index("uq_slack_outbox_card", "env_id", unique=True,
              postgresql_where=text("kind = 'card'")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    queue: Mapped[str] = mapped_column(String(96))
    position: Mapped[int] = mapped_column(BigInteger, server_default=OUTBOX_POSITION.next_value())
    kind: Mapped[str] = mapped_column(String(16))
    env_id: Mapped[int | None] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"))
    payload: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    revision: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class SlackQueue(Base):
    """One outbox queue's pace and its sender: `next_at` is the earliest a next write may go
    (Slack's pace, a Retry-After, a backoff); `holder` is the process sending it until
    `held_until`."""

    __tablename__ = "slack_queues"

    queue: Mapped[str] = mapped_column(String(96), primary_key=True)
    next_at: Mapped[datetime] = mapped_column(server_default=func.now())
    holder: Mapped[str | None] = mapped_column(String(128))
    held_until: Mapped[datetime | None]


class SlackCard(Base):
    """What the environment's card in Slack shows now (a digest of the last render sent), so
    an update that would change nothing is not sent."""

    __tablename__ = "slack_cards"

    env_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    sent_at: Mapped[datetime] = mapped_column(server_default=func.now())


class OrphanSighting(Base):
    """Something with Ephem's marks that no live environment owns, as reconciliation last saw
    it: reported once when first seen, destroyed once `first_seen_at` is a grace period old,
    tried again after `next_try_at` when the destroy failed. Kept in the store so that restarts
    and replicas agree on what was reported and when the grace period started."""

    __tablename__ = "orphan_sightings"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    env_id: Mapped[int | None] = mapped_column(BigInteger)
    env_name: Mapped[str | None] = mapped_column(String(63))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_try_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)


class SchedulerMark(Base):
    """When a periodic piece of work (reconciliation, database sizes) last ran, across
    replicas: the one that moves the mark does the run."""

    __tablename__ = "scheduler_marks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime]


class ApprovalRequest(Base):
    """A job that asks for snapshot-derived data, waiting for (or settled by) its approvers.

    The decision lives here and nowhere else: `status` leaves `pending` by one conditional
    UPDATE under the row's lock, so two approvers clicking at once make one decision. What it
    covers is exactly `env_id` + `snapshot` + `requester_id`; an approved request lasts as
    long as the environment. `card_channel`/`card_ts` locate the card in Slack, updated in place.
    """

    __tablename__ = "approval_requests"
    __table_args__ = (
        Index("ix_approval_requests_pending", "status", "expires_at"),
        Index("ix_approval_requests_env", "env_id", "snapshot", "requester_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    env_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    requester_id: Mapped[str] = mapped_column(String(64))
    snapshot: Mapped[str] = mapped_column(String(63))
    rules_version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    approvers: Mapped[list[str]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    usergroup: Mapped[str | None] = mapped_column(String(64))
    required: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    status: Mapped[ApprovalStatus] = mapped_column(_enum(ApprovalStatus, "approval_status"))
    card_channel: Mapped[str] = mapped_column(String(64))
    card_ts: Mapped[str | None] = mapped_column(String(32))
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None]
    decision_reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ApprovalVote(Base):
    """One approver's approval of one request: the primary key makes a double click one vote."""

    __tablename__ = "approval_votes"

    request_id: Mapped[int] = mapped_column(
        ForeignKey("approval_requests.id", ondelete="CASCADE"), primary_key=True)
    approver_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())
