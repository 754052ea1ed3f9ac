"""Run the camera simulator by hand: ``python -m tests.camsim [CLIPS_DIR [PORT]]``.

Runs in the venv on the main thread: encodes missing clips, starts `CameraSim` with every
mount, prints the URLs and serves until ^C.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.camsim import CameraSim
from tests.camsim.clips import make_clips


def main() -> None:
    """Serve every clip until ^C: ``python -m tests.camsim [CLIPS_DIR [PORT]]``."""
    clips_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache/nvr-camsim"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8554
    make_clips(clips_dir)
    with CameraSim(clips_dir, port) as sim:
        for mount in sim.mounts:
            print(sim.url(mount), flush=True)
        try:
            while sim.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
