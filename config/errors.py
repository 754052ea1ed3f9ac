"""Typed configuration errors; raised on the calling thread, never carrying secrets."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists one line per offending key.

    Retrying cannot help: the file (or environment) must be fixed.
    """

    retryable = False

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration:\n{lines}")
