"""jobs may reset an environment's data

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TYPE job_kind ADD VALUE IF NOT EXISTS 'reset_data'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; jobs of that kind are removed instead.
    op.execute("DELETE FROM jobs WHERE kind = 'reset_data'")
