"""Password hashing: what the daemon and the CLI use, and the tests' cheap hasher staying a
test seam (issue 15, item 7: the API tests hash with `tests.api_rig.TEST_HASHER`)."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

from nvr.storage import SegmentStore
from tests.api_rig import PASSWORD, TEST_HASHER

REPO = Path(__file__).resolve().parent.parent
PRODUCTION = "$argon2id$v=19$m=65536,t=3,p=4$"
CHEAP = "$argon2id$v=19$m=8,t=1,p=1$"


def stored_hash(root: Path, name: str) -> str:
    with sqlite3.connect(root / "index.db") as db:
        (value,) = db.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
    assert isinstance(value, str)
    return value


def test_a_store_opened_as_the_daemon_opens_it_hashes_at_full_strength(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        store.accounts.add_user("olga", "operator", PASSWORD, actor="test")
        store.accounts.set_password("olga", PASSWORD + " again", actor="test")
    finally:
        store.close()
    assert stored_hash(tmp_path, "olga").startswith(PRODUCTION)


def test_a_cheap_hash_is_upgraded_at_its_next_login_by_the_daemon(tmp_path: Path) -> None:
    """A hash carries its parameters: one made with the test hasher still verifies in a
    store opened without it, which rehashes it at full strength on the first good login."""
    url = f"sqlite:///{tmp_path / 'index.db'}"
    cheap = SegmentStore(tmp_path, url, password_hasher=TEST_HASHER)
    try:
        cheap.accounts.add_user("olga", "operator", PASSWORD, actor="test")
    finally:
        cheap.close()
    assert stored_hash(tmp_path, "olga").startswith(CHEAP)
    store = SegmentStore(tmp_path, url)
    try:
        assert store.accounts.check_password("olga", "not the password") is None
        assert stored_hash(tmp_path, "olga").startswith(CHEAP)
        user = store.accounts.check_password("olga", PASSWORD)
        assert user is not None and user.name == "olga"
    finally:
        store.close()
    assert stored_hash(tmp_path, "olga").startswith(PRODUCTION)


def test_only_tests_pass_a_password_hasher() -> None:
    """`password_hasher=` is a test seam: no module of the program passes it, so the daemon
    and the CLI always hash with the default (checked on the source, as tests/test_layout.py
    checks imports)."""
    passing = []
    for folder in ("nvr", "config", "storage", "ingest", "retention", "api"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and any(
                    k.arg in ("password_hasher", "hasher") for k in node.keywords
                ):
                    passing.append(f"{path.relative_to(REPO)}:{node.lineno}")
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name | ast.Attribute)
                    and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
                    == "AccountStore"
                    and len(node.args) > 1
                ):
                    passing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    # The one place that forwards it: SegmentStore hands its own argument to AccountStore.
    assert passing == ["storage/store.py:" + str(_forwarding_line())], passing


def _forwarding_line() -> int:
    source = (REPO / "storage" / "store.py").read_text().splitlines()
    (line,) = [
        n
        for n, text in enumerate(source, 1)
        if "AccountStore(self.index, self._password_hasher)" in text
    ]
    return line
