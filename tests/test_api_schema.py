"""Schemathesis over the published OpenAPI schema, against a real uvicorn with recorded
footage and an admin's token: no request, however malformed, gets a 5xx answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api_rig import Api

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# Changing a user may revoke the run's own token (new password, disabled), and so does
# logging out: those run last, on their own, so they cannot blind the main run.
SELF_DEFEATING = r"^/api/(logout|users/\{name\})$"


def schemathesis(api: Api, cwd: Path, *selection: str) -> str:
    done = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{api.base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-H",
            f"Authorization: Bearer {api.login('root')}",
            "--max-examples",
            "40",
            "--seed",
            "20261122",
            "--request-timeout",
            "60",
            *selection,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    found = re.search(r"(\d+) generated, (\d+) passed", out)
    assert found is not None and found.group(1) == found.group(2), out[-5000:]
    assert int(found.group(1)) > 0
    return out


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(footage_api: Api, tmp_path: Path) -> None:
    main = schemathesis(footage_api, tmp_path, "--exclude-path-regex", SELF_DEFEATING)
    assert "Authentication failed" not in main, "the run must reach past the login"
    schemathesis(footage_api, tmp_path, "--include-path-regex", SELF_DEFEATING)
