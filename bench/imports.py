"""What importing each library costs the daemon in resident memory, before any camera.

The ingest benchmark's one-camera memory target (80 + 8 MiB) has to hold the libraries the
owner fixed. This script imports them in a fresh interpreter, one group after another in the
order the daemon needs them, and prints VmRSS (/proc/self/status) after each: what a group
adds on top of the ones before it, and the running total. Then it imports our own packages
the same way, ending with `nvr.daemon` (what `nvr run` has loaded before it opens the store).

Each run is a fresh child interpreter (`sys.executable`, so the daemon's own site-packages):
nothing the calling process imported is counted. ``--repeat K`` runs K children and prints
the median of each step.

Run: ``python -m bench.imports [--repeat 5]``. Runs on the main thread; prints only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

STEPS: list[tuple[str, list[str]]] = [
    ("interpreter (python -c, nothing imported)", []),
    ("asyncio, ssl (standard library the servers use)", ["asyncio", "ssl"]),
    ("PyAV (av, its bundled FFmpeg)", ["av"]),
    ("SQLAlchemy 2 with its ORM", ["sqlalchemy", "sqlalchemy.orm"]),
    ("pydantic 2", ["pydantic"]),
    ("FastAPI, Starlette", ["fastapi"]),
    ("uvicorn", ["uvicorn"]),
    ("numpy (playback's sample tables)", ["numpy"]),
    ("our config/", ["nvr.config"]),
    ("our storage/", ["nvr.storage"]),
    ("our ingest/", ["nvr.ingest"]),
    ("our retention/", ["nvr.retention"]),
    ("our api/ (routes, models, playback, exports)", ["nvr.api.server"]),
    ("our nvr/ (the daemon)", ["nvr.daemon"]),
]

CHILD = """
import importlib, json, sys
def rss():
    with open('/proc/self/status', encoding='ascii') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError('no VmRSS')
out = []
for modules in json.loads(sys.argv[1]):
    for m in modules:
        importlib.import_module(m)
    out.append(rss())
print(json.dumps(out))
"""


def measure_once() -> list[int]:
    """VmRSS in KiB after each step, from one fresh child interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([mods for _, mods in STEPS])],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the child interpreter failed: {proc.stderr.strip()}")
    values: list[int] = json.loads(proc.stdout)
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="child interpreters; medians shown")
    args = p.parse_args(argv)
    runs = [measure_once() for _ in range(max(1, args.repeat))]
    medians = [statistics.median(col) / 1024 for col in zip(*runs, strict=True)]
    print(f"python {sys.version.split()[0]}, {len(runs)} runs, median VmRSS in MiB")
    print("| step | adds MiB | total MiB |\n|---|---:|---:|")
    prev = 0.0
    for (name, _), total in zip(STEPS, medians, strict=True):
        print(f"| {name} | {total - prev:.1f} | {total:.1f} |")
        prev = total
    return 0


if __name__ == "__main__":
    sys.exit(main())
