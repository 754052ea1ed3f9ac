"""Loading TOML into `NvrConfig`, turning pydantic's errors into lines that name the key path,
what was expected and what was found. Runs on the calling thread (CLI start-up)."""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from nvr.config.errors import ConfigError
from nvr.config.models import BUILTIN_TEST_PATTERN, CameraConfig, NvrConfig, StorageConfig

_SECRET_KEYS = frozenset(
    {
        "url",
        "database_url",
        "password",
        "password_env",
        "password_file",
        "username",
        "mqtt",
        "secret_env",
        "secret_file",
    }
)


def _key_path(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """`("cameras", 1, "url")` -> `cameras[1](gate).url`, naming the camera where known."""
    out = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f"({node['name']})"
        else:
            out += f".{part}" if out else part
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside `X | None`, `list[X]`, `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the schema allows in the table at `loc` (for "did you mean")."""
    model: type[BaseModel] | None = NvrConfig
    for part in loc:
        if isinstance(part, int):
            continue  # an element of a list of tables: same model
        if model is None or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _found(err: dict[str, Any]) -> str:
    loc = err.get("loc", ())
    if loc and loc[-1] in _SECRET_KEYS:
        return ""  # never echo a value that may be a secret
    if err["type"] == "missing":
        return ", found nothing"
    value = err.get("input")
    if isinstance(value, dict | list):
        return f", found a {'table' if isinstance(value, dict) else 'list'}"
    return f", found {value!r}"


def _describe(err: dict[str, Any], data: dict[str, Any]) -> str:
    path = _key_path(tuple(err.get("loc", ())), data)
    kind = err["type"]
    if kind == "extra_forbidden":
        loc = tuple(err.get("loc", ()))
        close = difflib.get_close_matches(str(loc[-1]), _keys_at(loc[:-1]), n=1) if loc else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{path}: unknown key (not part of the schema){hint}"
    if kind == "missing":
        return f"{path}: required key is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if kind == "value_error":
        return f"{path}: {msg}"
    msg = msg.removeprefix("Input should be ")
    return f"{path}: expected {msg[0].lower() + msg[1:]}{_found(err)}"


def parse_config(data: dict[str, Any], source: str) -> NvrConfig:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem."""
    try:
        return NvrConfig.model_validate(data)
    except ValidationError as err:
        problems = [_describe(dict(e), data) for e in err.errors()]
        raise ConfigError(source, problems) from None


def load_config(path: Path) -> NvrConfig:
    """Read and validate a TOML config file; relative storage paths resolve against its folder."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read file: {err.strerror}"]) from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(str(path), [f"not valid TOML: {err}"]) from err
    storage = data.get("storage")
    # An empty root is left for the schema to refuse (it would resolve to this folder).
    if isinstance(storage, dict) and isinstance(storage.get("root"), str) and storage["root"]:
        root = Path(storage["root"])
        if not root.is_absolute():
            storage["root"] = str((path.parent / root).resolve())
    config = parse_config(data, str(path))
    check_reserve(config, str(path))
    return config


def check_reserve(config: NvrConfig, source: str) -> None:
    """Refuse a `reserve_bytes` the storage root's filesystem can never hold free (the
    recorders would pause forever). Checked only when the root exists: a filesystem not yet
    mounted is not this folder's parent's."""
    root = config.storage.root
    try:
        stat = os.statvfs(root)
    except OSError:
        return
    size = stat.f_blocks * stat.f_frsize
    if config.storage.reserve_bytes >= size:
        raise ConfigError(
            source,
            [
                f"storage.reserve_bytes: expected less than the size of the filesystem "
                f"holding {root} ({size} bytes), found {config.storage.reserve_bytes}"
            ],
        )


def default_config(root: Path = Path("nvr-data")) -> NvrConfig:
    """The embedded default: data in `root`, SQLite index, and the built-in `demo` camera."""
    return NvrConfig(
        storage=StorageConfig(root=root.resolve()),
        cameras=[CameraConfig(name="demo", url=BUILTIN_TEST_PATTERN, segment_seconds=60)],
    )
