"""Each camera's retention window, stored with its footage: a window only ever grows, so
footage keeps the longest window it was ever promised, whatever config a later process reads.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "camera_windows",
        sa.Column("camera", sa.String(64), primary_key=True),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("camera_windows")
