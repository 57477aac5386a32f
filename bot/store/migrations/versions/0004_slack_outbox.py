"""slack outbox: writes to Slack persisted until Slack takes them, paced per channel

Revision ID: 0004
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE slack_outbox_position_seq")
    op.create_table(
        "slack_outbox",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("queue", sa.String(length=96), nullable=False),
        sa.Column("position", sa.BigInteger(),
                  server_default=sa.text("nextval('slack_outbox_position_seq')"),
                  nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("env_id", sa.BigInteger(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("revision", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["env_id"], ["environments.id"],
                                name=op.f("fk_slack_outbox_env_id_environments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slack_outbox")),
    )
    op.create_index("ix_slack_outbox_queue_position", "slack_outbox", ["queue", "position"])
    op.create_index("uq_slack_outbox_card", "slack_outbox", ["env_id"], unique=True,
                    postgresql_where=sa.text("kind = 'card'"))
    op.create_table(
        "slack_queues",
        sa.Column("queue", sa.String(length=96), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("held_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("queue", name=op.f("pk_slack_queues")),
    )
    op.create_table(
        "slack_cards",
        sa.Column("env_id", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["env_id"], ["environments.id"],
                                name=op.f("fk_slack_cards_env_id_environments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("env_id", name=op.f("pk_slack_cards")),
    )


def downgrade() -> None:
    op.drop_table("slack_cards")
    op.drop_table("slack_queues")
    op.drop_index("uq_slack_outbox_card", table_name="slack_outbox")
    op.drop_index("ix_slack_outbox_queue_position", table_name="slack_outbox")
    op.drop_table("slack_outbox")
    op.execute("DROP SEQUENCE slack_outbox_position_seq")
