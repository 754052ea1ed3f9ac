"""The index's schema history: Alembic migrations (`versions/`, numbered and linear, the
newest is `storage.index.HEAD_REVISION`) and their environment (`env`). `storage.index` runs
them on the thread that opens the store; nothing else imports them. A migration imports only
Alembic and SQLAlchemy, never the models of today's code."""
