"""approvals: jobs awaiting a decision, the requests and each approver's vote

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_STATUS = postgresql.ENUM("pending", "approved", "denied", "expired", "cancelled",
                          name="approval_status", create_type=False)


def upgrade() -> None:
    op.execute("ALTER TYPE job_status ADD VALUE IF NOT EXISTS 'awaiting_approval'")
    _STATUS.create(op.get_bind(), checkfirst=True)
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("env_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("requester_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot", sa.String(length=63), nullable=False),
        sa.Column("rules_version", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("approvers", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("usergroup", sa.String(length=64), nullable=True),
        sa.Column("required", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("status", _STATUS, nullable=False),
        sa.Column("card_channel", sa.String(length=64), nullable=False),
        sa.Column("card_ts", sa.String(length=32), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["env_id"], ["environments.id"],
                                name=op.f("fk_approval_requests_env_id_environments"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"],
                                name=op.f("fk_approval_requests_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
        sa.UniqueConstraint("job_id", name=op.f("uq_approval_requests_job_id")),
    )
    op.create_index("ix_approval_requests_pending", "approval_requests",
                    ["status", "expires_at"])
    op.create_index("ix_approval_requests_env", "approval_requests",
                    ["env_id", "snapshot", "requester_id"])
    op.create_table(
        "approval_votes",
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("approver_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["approval_requests.id"],
                                name=op.f("fk_approval_votes_request_id_approval_requests"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("request_id", "approver_id", name=op.f("pk_approval_votes")),
    )


def downgrade() -> None:
    op.drop_table("approval_votes")
    op.drop_index("ix_approval_requests_env", table_name="approval_requests")
    op.drop_index("ix_approval_requests_pending", table_name="approval_requests")
    op.drop_table("approval_requests")
    _STATUS.drop(op.get_bind(), checkfirst=True)
    # PostgreSQL cannot drop an enum value; jobs still waiting are failed instead.
    op.execute("UPDATE jobs SET status = 'failed', error = 'approvals were removed' "
               "WHERE status = 'awaiting_approval'")
