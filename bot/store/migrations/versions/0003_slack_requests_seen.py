"""remember accepted Slack requests of every kind (commands, clicks, events) against replays

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slack_requests_seen",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("keep_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_slack_requests_seen")),
    )
    op.create_index(op.f("ix_slack_requests_seen_keep_until"), "slack_requests_seen",
                    ["keep_until"], unique=False)
    # Event ids seen so far stay remembered for the day they were promised.
    op.execute("INSERT INTO slack_requests_seen (kind, key, seen_at, keep_until) "
               "SELECT 'event', event_id, seen_at, seen_at + interval '1 day' "
               "FROM slack_events_seen")
    op.drop_index(op.f("ix_slack_events_seen_seen_at"), table_name="slack_events_seen")
    op.drop_table("slack_events_seen")


def downgrade() -> None:
    op.create_table(
        "slack_events_seen",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_slack_events_seen")),
    )
    op.create_index(op.f("ix_slack_events_seen_seen_at"), "slack_events_seen", ["seen_at"],
                    unique=False)
    op.execute("INSERT INTO slack_events_seen (event_id, seen_at) "
               "SELECT key, seen_at FROM slack_requests_seen "
               "WHERE kind = 'event' AND length(key) <= 64")
    op.drop_index(op.f("ix_slack_requests_seen_keep_until"), table_name="slack_requests_seen")
    op.drop_table("slack_requests_seen")
