"""`AccountStore`: users of the HTTP API, their roles and cameras, and their bearer tokens (R7).

A repository over the shared index (`storage.repository`), reached as `SegmentStore.accounts`.
Passwords are stored only as argon2id hashes; tokens only as the sha256 of the token (they are
256-bit random, so a fast hash is enough and lets a request be authenticated by one indexed
lookup). Neither a password nor a token ever reaches a log line, an exception message or the
audit log.

Every change of a user (added, role, cameras, password, disabled) is written to the audit log
by the method that makes it, with the acting user or `cli:<os user>` as actor.

Threads: methods are blocking and thread-safe (writes go through the index's serialised write
transaction). Hashing a password takes tens of milliseconds of CPU: call `check_password`,
`add_user` and `set_password` through `asyncio.to_thread` from the event loop.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nvr.config.models import CAMERA_NAME, CAMERA_NAME_RULE
from nvr.storage.errors import StorageError
from nvr.storage.repository import Index, Repository
from nvr.storage.schema import TokenRow, UserCameraRow, UserRow
from nvr.storage.timestamps import DAY_MS

Role = Literal["viewer", "operator", "auditor", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ALL_CAMERAS = "*"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


class AccountError(StorageError):
    """A user change that cannot be made (unknown user, bad name, weak password, ...)."""


class LastAdminError(AccountError):
    """The change would leave no enabled admin: nobody could manage users any more."""


@dataclass(frozen=True)
class User:
    """A user as the API sees it: no password hash."""

    id: int
    name: str
    role: Role
    cameras: frozenset[str]
    """Camera names this user may see; `*` means all. Admins see every camera anyway."""
    disabled: bool
    created_ms: int
    unmasked: bool = False
    """May see behind privacy masks (R10); default masked."""

    def may_view(self, camera: str) -> bool:
        return self.role == "admin" or ALL_CAMERAS in self.cameras or camera in self.cameras

    @property
    def all_cameras(self) -> bool:
        return self.role == "admin" or ALL_CAMERAS in self.cameras


@dataclass(frozen=True)
class TokenSession:
    """A valid bearer token's user and token id (for logout)."""

    user: User
    token_id: int
    expires_ms: int


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise AccountError(
            "user names are 1-64 characters of letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, found {role!r}")
    return role


STRENGTH_CHARS = 72
"""zxcvbn judges at most this many characters (its own limit); longer passwords are judged by
their start, which is where a guesser starts too."""
MIN_SCORE = 3
"""zxcvbn's score 3: 'safely unguessable', more than 10^8 guesses. Below it are the passwords
on its lists of common passwords, names and words, keyboard walks, repeats and dates."""


def check_password_strength(password: str, name: str | None = None) -> None:
    """Refuse a password that is too short or too long, or that zxcvbn (a maintained
    library with ranked lists of the 30,000 most common passwords, names and words, and
    rules for repeats, sequences, keyboard walks and dates) scores below `MIN_SCORE`.
    The user's own name counts as a known word. Every place a password is set (API, CLI)
    comes through here. The message says why, never the password."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"passwords need at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"passwords are at most {MAX_PASSWORD} characters")
    from zxcvbn import zxcvbn  # imported when needed: its word lists take 30 ms to load

    judged = zxcvbn(password[:STRENGTH_CHARS], user_inputs=[name] if name else [])
    if judged["score"] < MIN_SCORE:
        warning = str(judged["feedback"].get("warning") or "").strip()
        why = warning.rstrip(".") if warning else "it is too easy to guess"
        raise AccountError(
            f"this password is too easy to guess ({why}); use a longer phrase of "
            "uncommon words, or a password manager"
        )


def check_cameras(cameras: Iterable[str]) -> frozenset[str]:
    out = frozenset(cameras)
    for cam in out:
        if cam != ALL_CAMERAS and not CAMERA_NAME.match(cam):
            raise AccountError(
                f"camera names match {CAMERA_NAME_RULE} (or * for all), found {cam!r}"
            )
    return out


class AccountStore(Repository):
    """Users, per-camera permissions and bearer tokens in the index."""

    def __init__(self, index: Index, hasher: PasswordHasher | None = None) -> None:
        """`hasher` hashes new passwords; the default is argon2-cffi's (argon2id, RFC 9106's
        low-memory profile: 64 MiB, 3 passes). Only tests pass another (cheap parameters,
        `SegmentStore(password_hasher=...)`): a hash carries its parameters, so a store
        opened later with the default still verifies it, and rehashes it at its next login."""
        super().__init__(index)
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._dummy_hash: str | None = None

    def _dummy(self) -> str:
        """A hash to verify against when the user is unknown, so timing does not tell."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    # --- reading ------------------------------------------------------------------------------

    def _to_user(self, s: Session, row: UserRow) -> User:
        cams = s.scalars(select(UserCameraRow.camera).where(UserCameraRow.user_id == row.id))
        return User(
            id=row.id,
            name=row.name,
            role=check_role(row.role),
            cameras=frozenset(cams),
            disabled=row.disabled,
            created_ms=row.created_ms,
            unmasked=bool(row.unmasked),
        )

    def users(self) -> list[User]:
        with Session(self._engine) as s:
            return [self._to_user(s, r) for r in s.scalars(select(UserRow).order_by(UserRow.name))]

    def user(self, name: str) -> User | None:
        with Session(self._engine) as s:
            row = s.scalars(select(UserRow).where(UserRow.name == name)).first()
            return None if row is None else self._to_user(s, row)

    def user_by_id(self, user_id: int) -> User | None:
        with Session(self._engine) as s:
            row = s.get(UserRow, user_id)
            return None if row is None else self._to_user(s, row)

    def _require(self, name: str) -> User:
        user = self.user(name)
        if user is None:
            raise AccountError(f"no user called {name!r}")
        return user

    # --- changes (each audited) ------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        role: str,
        password: str,
        *,
        cameras: Iterable[str] = (),
        actor: str,
    ) -> User:
        """Create a user. Raises AccountError if the name is taken or a value is invalid."""
        check_name(name)
        checked_role = check_role(role)
        check_password_strength(password, name)
        cams = check_cameras(cameras)
        digest = self._hasher.hash(password)
        now = self._clock()
        try:
            with self._writing() as s:
                # Names are unique without regard to case: "Olga" and "olga" would be two
                # accounts that a reader of the register takes for one person.
                taken = s.scalars(
                    select(UserRow.name).where(func.lower(UserRow.name) == name.lower())
                ).first()
                if taken is not None:
                    raise AccountError(
                        f"a user called {taken!r} already exists (names are compared without "
                        "regard to case)"
                    )
                row = UserRow(
                    name=name,
                    role=checked_role,
                    password_hash=digest,
                    disabled=False,
                    created_ms=now,
                    updated_ms=now,
                )
                s.add(row)
                s.flush()
                for cam in sorted(cams):
                    s.add(UserCameraRow(user_id=row.id, camera=cam))
        except IntegrityError as err:
            raise AccountError(f"a user called {name!r} already exists") from err
        self._audit.append(
            actor,
            "user-add",
            f"user:{name}",
            "ok",
            {"role": checked_role, "cameras": sorted(cams)},
        )
        return self._require(name)

    def _keep_an_admin(self, s: Session, user: User) -> None:
        """Inside the write transaction that demotes or disables `user`: refuse if no other
        enabled admin would be left. The enabled admins are read FOR UPDATE (PostgreSQL
        locks their rows; SQLite's writers are serialised), so two admins demoting each
        other at once cannot both succeed."""
        admins = set(
            s.scalars(
                select(UserRow.id)
                .where(UserRow.role == "admin", UserRow.disabled.is_(False))
                .with_for_update()
            )
        )
        if user.id in admins and not admins - {user.id}:
            raise LastAdminError(
                f"{user.name!r} is the last enabled admin: add or enable another admin first"
            )

    def _refused(self, err: AccountError, actor: str, action: str, name: str) -> None:
        self._audit.append(actor, action, f"user:{name}", "refused", {"reason": str(err)})

    def set_role(self, name: str, role: str, *, actor: str) -> User:
        """Change a user's role; refused (LastAdminError) for the last enabled admin."""
        checked = check_role(role)
        before = self._require(name)
        try:
            with self._writing() as s:
                if checked != "admin":
                    self._keep_an_admin(s, before)
                s.execute(
                    update(UserRow)
                    .where(UserRow.id == before.id)
                    .values(role=checked, updated_ms=self._clock())
                )
        except LastAdminError as err:
            self._refused(err, actor, "user-role", name)
            raise
        self._audit.append(
            actor, "user-role", f"user:{name}", "ok", {"from": before.role, "to": checked}
        )
        return self._require(name)

    def set_cameras(self, name: str, cameras: Iterable[str], *, actor: str) -> User:
        cams = check_cameras(cameras)
        before = self._require(name)
        with self._writing() as s:
            s.execute(delete(UserCameraRow).where(UserCameraRow.user_id == before.id))
            for cam in sorted(cams):
                s.add(UserCameraRow(user_id=before.id, camera=cam))
            s.execute(
                update(UserRow).where(UserRow.id == before.id).values(updated_ms=self._clock())
            )
        self._audit.append(
            actor,
            "user-cameras",
            f"user:{name}",
            "ok",
            {"from": sorted(before.cameras), "to": sorted(cams)},
        )
        return self._require(name)

    def set_disabled(self, name: str, disabled: bool, *, actor: str) -> User:
        """Disable (or enable again) a user; disabling also revokes every token of the user.
        Disabling the last enabled admin is refused (LastAdminError)."""
        user = self._require(name)
        try:
            with self._writing() as s:
                if disabled:
                    self._keep_an_admin(s, user)
                s.execute(
                    update(UserRow)
                    .where(UserRow.id == user.id)
                    .values(disabled=disabled, updated_ms=self._clock())
                )
        except LastAdminError as err:
            self._refused(err, actor, "user-disable", name)
            raise
        if disabled:
            self._revoke_all(user.id)
        self._audit.append(
            actor, "user-disable" if disabled else "user-enable", f"user:{name}", "ok"
        )
        return self._require(name)

    def set_unmasked(self, name: str, unmasked: bool, *, actor: str) -> User:
        """Allow (or no longer allow) a user to see behind privacy masks (audited)."""
        user = self._require(name)
        with self._writing() as s:
            s.execute(
                update(UserRow)
                .where(UserRow.id == user.id)
                .values(unmasked=unmasked, updated_ms=self._clock())
            )
        self._audit.append(
            actor, "user-unmasked", f"user:{name}", "ok", {"from": user.unmasked, "to": unmasked}
        )
        return self._require(name)

    def set_password(self, name: str, password: str, *, actor: str) -> User:
        """Set a new password; every token of the user is revoked."""
        check_password_strength(password, name)
        user = self._require(name)
        self._update(name, password_hash=self._hasher.hash(password))
        self._revoke_all(user.id)
        self._audit.append(actor, "user-password", f"user:{name}", "ok")
        return self._require(name)

    def _update(self, name: str, **values: Any) -> None:
        with self._writing() as s:
            s.execute(
                update(UserRow)
                .where(UserRow.name == name)
                .values(updated_ms=self._clock(), **values)
            )

    # --- authentication ---------------------------------------------------------------------------

    def check_password(self, name: str, password: str) -> User | None:
        """The user if `password` is theirs and they are enabled; else None (same timing)."""
        with Session(self._engine) as s:
            row = s.scalars(select(UserRow).where(UserRow.name == name)).first()
            stored = row.password_hash if row is not None else self._dummy()
            user = self._to_user(s, row) if row is not None else None
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._update(name, password_hash=self._hasher.hash(password))
        return user

    def issue_token(self, user: User, ttl_ms: int) -> tuple[str, int]:
        """A new bearer token for `user` and its expiry (UTC ms). Only its hash is stored."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + ttl_ms
        with self._writing() as s:
            s.add(
                TokenRow(
                    user_id=user.id,
                    token_hash=token_digest(token),
                    created_ms=now,
                    expires_ms=expires,
                    revoked_ms=None,
                )
            )
        return token, expires

    def session(self, token: str) -> TokenSession | None:
        """The session a bearer token belongs to, if the token is valid and the user enabled."""
        now = self._clock()
        with Session(self._engine) as s:
            found = s.execute(
                select(TokenRow, UserRow)
                .join(UserRow, UserRow.id == TokenRow.user_id)
                .where(
                    TokenRow.token_hash == token_digest(token),
                    TokenRow.revoked_ms.is_(None),
                    TokenRow.expires_ms > now,
                    UserRow.disabled.is_(False),
                )
            ).first()
            if found is None:
                return None
            tok, row = found
            return TokenSession(self._to_user(s, row), tok.id, tok.expires_ms)

    def session_by_id(self, token_id: int) -> TokenSession | None:
        """The session of token `token_id` if it is still valid (not revoked, unexpired)
        and its user enabled: what a playback link made in that session rests on."""
        now = self._clock()
        with Session(self._engine) as s:
            found = s.execute(
                select(TokenRow, UserRow)
                .join(UserRow, UserRow.id == TokenRow.user_id)
                .where(
                    TokenRow.id == token_id,
                    TokenRow.revoked_ms.is_(None),
                    TokenRow.expires_ms > now,
                    UserRow.disabled.is_(False),
                )
            ).first()
            if found is None:
                return None
            tok, row = found
            return TokenSession(self._to_user(s, row), tok.id, tok.expires_ms)

    def revoke(self, token_id: int) -> None:
        with self._writing() as s:
            s.execute(
                update(TokenRow)
                .where(TokenRow.id == token_id, TokenRow.revoked_ms.is_(None))
                .values(revoked_ms=self._clock())
            )

    def _revoke_all(self, user_id: int) -> None:
        with self._writing() as s:
            s.execute(
                update(TokenRow)
                .where(TokenRow.user_id == user_id, TokenRow.revoked_ms.is_(None))
                .values(revoked_ms=self._clock())
            )

    def drop_expired_tokens(self) -> int:
        """Forget tokens that expired (or were revoked) more than a day ago."""
        cutoff = self._clock() - DAY_MS
        with self._writing() as s:
            result = s.execute(
                delete(TokenRow).where(
                    (TokenRow.expires_ms < cutoff)
                    | (TokenRow.revoked_ms.is_not(None) & (TokenRow.revoked_ms < cutoff))
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)
