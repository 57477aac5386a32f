"""jobs: an index on the environment's active jobs, for the claim's "first in its line" check

Without it every claim compared each candidate with every job (a nested loop over the table):
with two thousand queued jobs one claim took about a second. The claim only looks at queued
and running jobs of the same environment, so the index is partial.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_jobs_env_active ON jobs (env_id, id) "
               "WHERE status IN ('queued', 'running')")


def downgrade() -> None:
    op.execute("DROP INDEX ix_jobs_env_active")
