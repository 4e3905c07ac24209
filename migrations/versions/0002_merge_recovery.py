"""merge recovery: the merge's owner, heartbeat and attempts

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merge_worker_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("merge_heartbeat_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("merge_attempts", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("merge_attempts")
        batch_op.drop_column("merge_heartbeat_at")
        batch_op.drop_column("merge_worker_id")
