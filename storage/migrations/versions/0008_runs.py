"""Evidence of time for retention: the recorder's runs (boot, wall clock and uptime), holds
after a step of the wall clock, and each segment's evidence time (`storage.clock`).

Segments indexed before this revision are stamped from their creation times, relative to the
newest (so the first run, at evidence time 0, finds them as old as their wall clock said).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_wall_ms", sa.BigInteger(), nullable=False),
        sa.Column("started_uptime_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_wall_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_uptime_ms", sa.BigInteger(), nullable=False),
        sa.Column("elapsed_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("synchronised", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "clock_holds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("uptime_ms", sa.BigInteger(), nullable=False),
        sa.Column("step_ms", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("cleared_ms", sa.BigInteger(), nullable=True),
        sa.Column("cleared_by", sa.String(128), nullable=True),
        sa.Column("cleared_reason", sa.Text(), nullable=True),
    )
    op.add_column("segments", sa.Column("elapsed_ms", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE segments SET elapsed_ms = created_ms - "
        "(SELECT max(s2.created_ms) FROM segments s2)"
    )


def downgrade() -> None:
    op.drop_column("segments", "elapsed_ms")
    op.drop_table("clock_holds")
    op.drop_table("runs")
