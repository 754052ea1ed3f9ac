"""Evidence: early ends of locks by two admins (request + approval), and signed checkpoints
of the audit log.

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("locks", sa.Column("end_requested_by", sa.String(128), nullable=True))
    op.add_column("locks", sa.Column("end_requested_ms", sa.BigInteger(), nullable=True))
    op.add_column("locks", sa.Column("end_request_reason", sa.Text(), nullable=True))
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("audit_id", sa.Integer(), nullable=False),
        sa.Column("audit_hash", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_index("ix_audit_checkpoints_audit", "audit_checkpoints", ["audit_id"])
    if op.get_bind().dialect.name == "sqlite":
        # The checkpoints are as append-only as the log they anchor.
        op.execute(
            "CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END"
        )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_delete")
    op.execute("DROP TRIGGER IF EXISTS audit_checkpoints_no_update")
    op.drop_index("ix_audit_checkpoints_audit", "audit_checkpoints")
    op.drop_table("audit_checkpoints")
    op.drop_column("locks", "end_request_reason")
    op.drop_column("locks", "end_requested_ms")
    op.drop_column("locks", "end_requested_by")
