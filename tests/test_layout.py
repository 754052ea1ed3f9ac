"""The installed layout (issue 15, item 4): one `nvr` namespace, no generic top-level names."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGES = ("config", "storage", "ingest", "retention", "api")


def test_the_folders_install_under_nvr_and_nothing_generic_is_importable(tmp_path: Path) -> None:
    """Outside the checkout (so its folders are not on the path), `nvr.storage` and the rest
    import, and a bare `import storage` finds nothing: no other software's `config` or `api`
    is shadowed, and no second copy of a module can be loaded by its short name."""
    probe = (
        "import importlib, json\n"
        f"names = {PACKAGES!r}\n"
        "found = {n: importlib.import_module('nvr.' + n).__name__ for n in names}\n"
        "bare = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "        bare[n] = 'importable'\n"
        "    except ModuleNotFoundError:\n"
        "        bare[n] = 'missing'\n"
        "print(json.dumps([found, bare]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found, bare = json.loads(done.stdout)
    assert found == {n: f"nvr.{n}" for n in PACKAGES}
    assert bare == dict.fromkeys(PACKAGES, "missing")


ALLOWED = {
    "config": {"config"},
    "storage": {"storage", "config"},
    "ingest": {"ingest", "storage", "config"},
    "retention": {"retention", "storage", "config"},
}
"""Which of the project's folders each folder may import (itself included): imports go down.
`api` and `nvr` sit on top and may import any of them."""


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, folder) of every `nvr.<folder>` import in `path`, at any depth (a late import
    inside a function counts as much as one at the top)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "nvr":
                names = [f"nvr.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nvr" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_imports_go_down() -> None:
    """`config` imports no other folder; `storage` only `config`; `ingest` and `retention`
    only those two (issue 15: `storage.clock` used to import `ingest.timecheck` late)."""
    repo = Path(__file__).resolve().parent.parent
    upward = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((repo / folder).rglob("*.py")):
            for line, target in _project_imports(path):
                if target not in allowed:  # another folder, or a module of `nvr/` itself
                    upward.append(f"{path.relative_to(repo)}:{line} imports nvr.{target}")
    assert upward == []


def test_optional_stacks_load_on_first_use() -> None:
    """WebRTC (aiortc with its ICE, DTLS and SCTP stacks) and GB/T 28181's SIP library load on
    the first WHEP offer or where `[gb28181]` is configured, never in every recorder: each
    costs megabytes of resident memory per process (issue 12's per-camera budget)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, nvr.daemon, nvr.api.live.service, nvr.api.routes.live\n"
            "print(' '.join(m for m in ('aiortc', 'aioice', 'aiosipua') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""


def test_each_folder_says_what_it_owns_and_which_way_its_imports_go() -> None:
    """Every package's `__init__.py` opens with a docstring (what it owns); each top-level
    folder's also says which way its imports go (issue 15's done-when)."""
    repo = Path(__file__).resolve().parent.parent
    missing = []
    for folder in (*PACKAGES, "nvr"):
        top = ast.get_docstring(ast.parse((repo / folder / "__init__.py").read_text())) or ""
        if "imports" not in top.lower():
            missing.append(f"{folder}/__init__.py: no word on imports")
        for init in sorted((repo / folder).rglob("__init__.py")):
            if init.parent.name == "versions":
                continue  # the migration scripts' folder
            if not ast.get_docstring(ast.parse(init.read_text())):
                missing.append(f"{init.relative_to(repo)}: no docstring")
    assert missing == []
