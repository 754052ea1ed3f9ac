"""The daemon (`nvr run -c FILE`) with a fault injected between a segment's rename and its index
row, for `bench.crash --scenario rename-insert`: once the trigger file (`argv[2]`) exists, the
next recorder commit renames its segment to its final name and the process SIGKILLs itself
before the row is inserted (the trigger is removed first, so a restart runs clean until the
next trigger). Runs the daemon's own event loop and threads; the patch runs on the recorder
thread that commits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from nvr.cli import setup_logging
from nvr.config import load_config
from nvr.daemon import run_daemon
from nvr.storage.store import SegmentStore


def main() -> None:
    config, trigger = Path(sys.argv[1]), Path(sys.argv[2])
    real_insert = SegmentStore._insert

    def insert(self: SegmentStore, written: Any, info: Any, *, recovered: bool, **kw: Any) -> Any:
        if not recovered and trigger.exists():
            trigger.unlink()
            os.kill(os.getpid(), signal.SIGKILL)  # renamed and fsynced, no row yet
        return real_insert(self, written, info, recovered=recovered, **kw)

    SegmentStore._insert = insert  # type: ignore[method-assign]
    cfg = load_config(config)
    setup_logging(cfg.log_level)
    asyncio.run(run_daemon(cfg))


if __name__ == "__main__":
    main()
