"""Alembic environment: runs migrations on the connection `storage.index` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from nvr.storage.schema import Base

connection: Connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
