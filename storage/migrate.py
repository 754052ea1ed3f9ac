"""Child process of `storage.index.migrate(..., in_child=True)`: upgrade an index's schema.

Reads the database URL from standard input (never from argv, where `ps` would show a
password), runs Alembic's upgrade to head and exits 0; on failure the error is the last line
on standard error and the exit status is 1. Runs on the main thread of its own process."""

from __future__ import annotations

import sys

from nvr.storage.index import make_engine, upgrade


def main() -> int:
    url = sys.stdin.read().strip()
    if not url:
        print("no database URL on standard input", file=sys.stderr)
        return 1
    engine = make_engine(url)
    try:
        upgrade(engine)
    except Exception as err:  # noqa: BLE001 - the parent reads the message, not a traceback
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
