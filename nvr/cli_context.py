"""What the CLI's commands start from: the `-c FILE` option, the config it names
(`nvr.configpath`), its store opened beside a running daemon, and who acts (for the audit
log). One definition for every command module (`nvr.cli`, `nvr.cli_api`, `nvr.cli_index`,
`nvr.cli_retention`). Runs on the CLI's main thread. Imports go down: `config`, `storage`.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
from collections.abc import Iterator
from pathlib import Path

from nvr import configpath
from nvr.config import NvrConfig
from nvr.storage import SegmentStore


def config_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    """A subcommand `name` that takes `-c FILE` (which file: `nvr.configpath`)."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("-c", "--config", type=Path, help=configpath.HELP)
    return p


def open_store(config: NvrConfig) -> SegmentStore:
    """The store of `config`, beside a running daemon (no writer lock), with the evidence
    settings (lock bounds, the key signing the audit log)."""
    return SegmentStore(
        config.storage.root,
        config.storage.index_url(),
        exclusive=False,
        retention_days=config.retention_days,
        max_lock_years=config.evidence.max_lock_years,
        signing_key=config.signing_key_path(),
        checkpoint_entries=config.evidence.checkpoint_entries,
        checkpoint_ms=config.evidence.checkpoint_minutes * 60_000,
        clock_stable_s=config.retention.clock_stable_minutes * 60,
    )


@contextlib.contextmanager
def opened(args: argparse.Namespace) -> Iterator[tuple[NvrConfig, SegmentStore]]:
    """The config named by `-c` and its store (beside a running daemon), closed after."""
    config = configpath.load(args.config)
    store = open_store(config)
    try:
        yield config, store
    finally:
        store.close()


def actor() -> str:
    """Who is acting at the command line (audited)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
