"""Which config file a CLI command uses: `-c FILE`, else `$NVR_CONFIG`, else
`/etc/nvr/nvr.toml` when it exists (the installed daemon's), else the embedded demo default,
so forgetting `-c` on an installed box does not silently open an empty demo store. Runs on
the CLI's main thread."""

from __future__ import annotations

import os
from pathlib import Path

from nvr.config import NvrConfig, default_config, load_config

ENV = "NVR_CONFIG"
DEFAULT_PATH = Path("/etc/nvr/nvr.toml")
HELP = f"TOML config (default: ${ENV}, else {DEFAULT_PATH} if it exists, else the embedded demo)"


def config_path(given: Path | None) -> Path | None:
    """The file to read, or None for the embedded default."""
    if given is not None:
        return given
    env = os.environ.get(ENV, "").strip()
    if env:
        return Path(env)
    if DEFAULT_PATH.exists():
        return DEFAULT_PATH
    return None


def load(given: Path | None) -> NvrConfig:
    """The config a command runs with (see the module's docstring)."""
    path = config_path(given)
    return default_config() if path is None else load_config(path)
