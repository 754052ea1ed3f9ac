"""Segments of audio-only cameras (issue 12): no video codec, width or height.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.alter_column("video_codec", existing_type=sa.String(32), nullable=True)
        batch.alter_column("width", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("height", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("segments") as batch:
        batch.alter_column("video_codec", existing_type=sa.String(32), nullable=False)
        batch.alter_column("width", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("height", existing_type=sa.Integer(), nullable=False)
