"""CLI commands for the API's accounts and evidence: `user` (add, list, set, disable, enable),
`metrics-token`, `audit-verify` and `verify-export`. Account commands open the store beside a
running daemon (no writer lock) and change users through `SegmentStore.accounts`, which audits
every change with `cli:<os user>` as actor. Passwords are read from stdin or a terminal prompt,
never from the command line, and never printed (a new scrape token is printed once, or written
to a file, because Prometheus needs it). Runs on the main thread."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from nvr import configpath
from nvr.cli_context import actor, config_command, open_store
from nvr.config import NvrConfig
from nvr.show import when as iso
from nvr.storage import SegmentStore
from nvr.storage.accounts import ROLES, AccountError


def _cameras(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [c.strip() for c in text.split(",") if c.strip()]


def _checked_cameras(
    config: NvrConfig, store: SegmentStore, cameras: list[str] | None
) -> list[str] | None:
    """`cameras` if each is `*` or a camera of the config or the index; else exit saying
    which are unknown (a typo would give a user no camera at all, silently)."""
    if cameras is None:
        return None
    known = {c.name for c in config.cameras} | set(store.cameras())
    unknown = [c for c in cameras if c != "*" and c not in known]
    if unknown:
        names = ", ".join(repr(c) for c in unknown)
        raise SystemExit(
            f"nvr user: unknown camera{'s' if len(unknown) > 1 else ''} {names} "
            f"(known: {', '.join(sorted(known)) or 'none'}; * for all); nothing changed"
        )
    return cameras


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise AccountError("give --password-stdin (and the password on stdin)")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def cmd_user_add(args: argparse.Namespace) -> int:
    config = configpath.load(args.config)
    store = open_store(config)
    try:
        cameras = _checked_cameras(config, store, _cameras(args.cameras)) or []
        password = _password(args.password_stdin)
        user = store.accounts.add_user(
            args.name, args.role, password, cameras=cameras, actor=actor()
        )
    finally:
        store.close()
    cams = ",".join(sorted(user.cameras)) or "(none)"
    print(f"added {user.name}: {user.role}, cameras {cams}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    store = open_store(configpath.load(args.config))
    try:
        users = store.accounts.users()
    finally:
        store.close()
    for u in users:
        cams = ",".join(sorted(u.cameras)) or "(none)"
        state = "disabled" if u.disabled else "enabled"
        masks = "\tunmasked" if u.unmasked else ""
        print(f"{u.name}\t{u.role}\t{state}\tcameras {cams}{masks}")
    if not users:
        print("no users")
    return 0


def cmd_user_set(args: argparse.Namespace) -> int:
    config = configpath.load(args.config)
    store = open_store(config)
    try:
        cameras = _checked_cameras(config, store, _cameras(args.cameras))
        password = _password(True) if args.password_stdin else None
        if store.accounts.user(args.name) is None:
            raise AccountError(f"no user called {args.name!r}")
        if args.role is not None:
            store.accounts.set_role(args.name, args.role, actor=actor())
        if cameras is not None:
            store.accounts.set_cameras(args.name, cameras, actor=actor())
        if password is not None:
            store.accounts.set_password(args.name, password, actor=actor())
        if args.unmasked is not None:
            store.accounts.set_unmasked(args.name, args.unmasked == "yes", actor=actor())
        user = store.accounts.user(args.name)
    finally:
        store.close()
    if user is not None:
        cams = ",".join(sorted(user.cameras)) or "(none)"
        masks = "sees behind privacy masks" if user.unmasked else "privacy masks applied"
        print(f"{user.name}: {user.role}, cameras {cams}, {masks}")
    return 0


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    store = open_store(configpath.load(args.config))
    try:
        user = store.accounts.set_disabled(args.name, disabled, actor=actor())
    finally:
        store.close()
    print(f"{user.name}: {'disabled (tokens revoked)' if disabled else 'enabled'}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def cmd_user_enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def _write_file(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` whole or not at all (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def cmd_metrics_token(args: argparse.Namespace) -> int:
    """A new static scrape token for `/metrics`: its sha256 goes to `[api]
    metrics_token_file` (replacing the old token), the token itself to `--token-file` or
    stdout, once. The running daemon picks the new hash up at the next scrape."""
    from nvr.api.auth import new_scrape_token

    config = configpath.load(args.config)
    target: Path | None = args.hash_file or (
        config.api.metrics_token_file if config.api is not None else None
    )
    if target is None:
        print(
            "no hash file: set [api] metrics_token_file in the config (or give --hash-file)",
            file=sys.stderr,
        )
        return 2
    token, digest = new_scrape_token()
    try:
        if args.token_file is not None:
            _write_file(args.token_file, token + "\n", 0o600)
        # the hash is no secret (the token is 256 random bits), so the daemon may read it
        _write_file(target, digest + "\n", 0o644)
    except OSError as err:
        print(f"cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 1
    store = open_store(config)
    try:
        store.audit.append(actor(), "metrics-token", "metrics", "ok", {"hash_file": str(target)})
    finally:
        store.close()
    if args.token_file is not None:
        print(f"scrape token written to {args.token_file} (mode 0600); its sha256 to {target}")
    else:
        print(token)
    return 0


def _read_key(path: Path | None) -> bytes | None:
    """The public key given with `--key`, None without one; exit 2 naming the file when it
    cannot be read."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        print(f"cannot read {path}: {err.strerror}", file=sys.stderr)
        raise SystemExit(2) from err


def cmd_audit_verify(args: argparse.Namespace) -> int:
    key = _read_key(args.key)
    store = open_store(configpath.load(args.config))
    try:
        report = store.audit.report(key)
    finally:
        store.close()
    last = report.last_good
    anchor = (
        f"last good checkpoint: entry {last.audit_id}, signed {iso(last.at_ms)}"
        if last is not None
        else "no good checkpoint"
    )
    if report.problems:
        for line in report.problems:
            print(f"PROBLEM: {line}")
        if report.first_bad is not None:
            print(f"first entry that fails: {report.first_bad}")
        print(anchor)
        print(f"audit log: {len(report.problems)} problems", file=sys.stderr)
        return 1
    print(
        f"audit log intact: {report.entries} entries match their hashes, the chain is unbroken, "
        f"the signed head and {report.checkpoints} signed checkpoints hold; {anchor}"
    )
    return 0


def cmd_verify_export(args: argparse.Namespace) -> int:
    from nvr.storage.media.package import verify_package

    key = _read_key(args.key)
    result = verify_package(args.package, key)
    for note in result.notes:
        print(f"note: {note}")
    if not result.ok:
        for line in result.problems:
            print(f"MISMATCH: {line}")
        print(f"{args.package}: NOT verified ({len(result.problems)} problems)", file=sys.stderr)
        return 1
    manifest = result.manifest or {}
    files = manifest.get("files", [])
    print(
        f"{args.package}: verified: signature, manifest and {len(files)} files "
        f"(export {manifest.get('export_id')}, camera {manifest.get('camera')})"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `user`, `metrics-token`, `audit-verify` and `verify-export` to the `nvr` parser."""
    user = sub.add_parser("user", help="manage API users (add, list, set, disable, enable)")
    users = user.add_subparsers(dest="user_command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        return config_command(users, name, help_text)

    p = with_config("add", "add a user")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--cameras", help="comma-separated camera names, or * for all")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_user_add)

    p = with_config("list", "list users")
    p.set_defaults(func=cmd_user_list)

    p = with_config("set", "change a user's role, cameras or password")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES)
    p.add_argument("--cameras", help="comma-separated camera names, or * for all")
    p.add_argument("--password-stdin", action="store_true", help="new password from stdin")
    p.add_argument(
        "--unmasked",
        choices=("yes", "no"),
        help="whether the user may see behind cameras' privacy masks (default for new users: no)",
    )
    p.set_defaults(func=cmd_user_set)

    p = with_config("disable", "disable a user (revokes their tokens)")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_disable)

    p = with_config("enable", "enable a disabled user")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_enable)

    p = config_command(
        sub,
        "metrics-token",
        "make a new static bearer token that may read /metrics only (for Prometheus)",
    )
    p.add_argument(
        "--hash-file",
        type=Path,
        help="where to store its sha256 (default: [api] metrics_token_file)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="write the token here (mode 0600) instead of printing it, e.g. for Prometheus's "
        "credentials_file",
    )
    p.set_defaults(func=cmd_metrics_token)

    p = config_command(
        sub, "audit-verify", "walk the audit log's hash chain and check its signed checkpoints"
    )
    p.add_argument(
        "--key",
        type=Path,
        help="the recorder's public key (default: the public half of the signing key)",
    )
    p.set_defaults(func=cmd_audit_verify)

    p = sub.add_parser("verify-export", help="check an export package offline")
    p.add_argument("package", type=Path)
    p.add_argument("--key", type=Path, help="the recorder's public key (GET /api/signing-key)")
    p.set_defaults(func=cmd_verify_export)
