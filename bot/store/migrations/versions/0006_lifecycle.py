"""lifecycle: the last reminder, database sizes, orphan sightings, scheduler marks

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("environments", sa.Column("last_reminded_at", sa.DateTime(timezone=True),
                                            nullable=True))
    op.add_column("environments", sa.Column("db_bytes", sa.BigInteger(), nullable=True))
    op.add_column("environments", sa.Column("db_measured_at", sa.DateTime(timezone=True),
                                            nullable=True))
    op.create_index(op.f("ix_environments_db_measured_at"), "environments",
                    ["db_measured_at"], unique=False)
    op.create_table(
        "orphan_sightings",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("env_id", sa.BigInteger(), nullable=True),
        sa.Column("env_name", sa.String(length=63), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("kind", "name", name=op.f("pk_orphan_sightings")),
    )
    op.create_table(
        "scheduler_marks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_marks")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_marks")
    op.drop_table("orphan_sightings")
    op.drop_index(op.f("ix_environments_db_measured_at"), table_name="environments")
    op.drop_column("environments", "db_measured_at")
    op.drop_column("environments", "db_bytes")
    op.drop_column("environments", "last_reminded_at")
