"""The installed layout (issue 15, item 4): one `nvr` namespace, no generic top-level names."""

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
