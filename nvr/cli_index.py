"""CLI commands for the index itself: `nvr index rebuild` (a new index from the segment files,
for a damaged one; see `storage.rebuild`). Runs on the main thread, with the recorder stopped.
"""

from __future__ import annotations

import argparse

from nvr import configpath
from nvr.cli_context import config_command
from nvr.storage.rebuild import rebuild_index


def cmd_rebuild(args: argparse.Namespace) -> int:
    config = configpath.load(args.config)
    report = rebuild_index(config.storage.root, config.storage.index_url())
    if report.damaged is not None:
        print(f"kept the old index as {report.damaged}")
    else:
        print("there was no index file: built from the segment files alone")
    for camera, c in sorted(report.cameras.items()):
        print(
            f"{camera}: {c.files} segment files indexed: {c.proven} proven by the old index "
            f"(hash and chain), {c.recovered} without a proven row (marked recovered); "
            f"{c.relinked} proven files linked anew after a break in the hash chain"
        )
    for table, count in sorted(report.copied.items()):
        if count:
            print(f"table {table}: {count} rows kept")
    for line in report.problems:
        print(line)
    print(
        "index rebuilt; check it with `nvr verify`"
        + (f" ({len(report.problems)} problems above)" if report.problems else "")
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `nvr index ...` to the `nvr` parser."""
    index = sub.add_parser("index", help="maintain the index database")
    isub = index.add_subparsers(dest="index_command", required=True)
    p = config_command(
        isub,
        "rebuild",
        "build a new index from the segment files (the old one is kept aside); "
        "run with the recorder stopped",
    )
    p.set_defaults(func=cmd_rebuild)
