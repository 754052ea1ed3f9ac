"""Picture-health findings (issue 18): covered, defocused, re-pointed, frozen, no signal.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "picture_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("camera", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("raised_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("snapshot", sa.String(512), nullable=True),
    )
    op.create_index("ix_picture_events_camera_start", "picture_events", ["camera", "start_ms"])


def downgrade() -> None:
    op.drop_index("ix_picture_events_camera_start", "picture_events")
    op.drop_table("picture_events")
