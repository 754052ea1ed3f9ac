"""Configuration: the TOML schema, its validation and loading.

Owns: the frozen pydantic models every other package receives, `load_config` (file -> models,
with errors naming the file, the key path, what was expected and what was found) and the
embedded default used by `nvr run` with no file. Pure functions; runs on whichever thread
calls it (the CLI, before the event loop starts). Nothing here reads settings at import time.

Imports: pydantic and the standard library only; every other package imports `config`.
"""

from nvr.config.errors import ConfigError
from nvr.config.loader import default_config, load_config, parse_config
from nvr.config.models import (
    BUILTIN_TEST_PATTERN,
    MIN_RETENTION_DAYS,
    CameraConfig,
    NvrConfig,
    RetentionConfig,
    StorageConfig,
)

__all__ = [
    "BUILTIN_TEST_PATTERN",
    "MIN_RETENTION_DAYS",
    "CameraConfig",
    "ConfigError",
    "NvrConfig",
    "RetentionConfig",
    "StorageConfig",
    "default_config",
    "load_config",
    "parse_config",
]
