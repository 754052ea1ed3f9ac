"""Config validation: every rejection names the key path, the expectation and what was found."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nvr.config import ConfigError, default_config, load_config

GOOD = """
[storage]
root = "rec"
[retention]
days = 45
[[cameras]]
name = "gate"
url = "rtsp://10.0.0.5:554/stream1"
username = "viewer"
password_env = "GATE_PASSWORD"
transport = "udp"
segment_seconds = 30
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nvr.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_valid_file_loads_with_relative_root(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.storage.root == (tmp_path / "rec").resolve()
    assert config.retention.days == 45
    cam = config.camera("gate")
    assert cam.transport == "udp" and cam.segment_seconds == 30
    assert config.storage.index_url() == f"sqlite:///{tmp_path.resolve() / 'rec' / 'index.db'}"


def test_example_file_is_valid() -> None:
    example = Path(__file__).parents[1] / "config" / "example.toml"
    config = load_config(example)
    assert config.cameras


def test_retention_below_floor_is_refused(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("days = 45", "days = 29"))
    assert out == ["retention.days: must be at least 30 (the regulation's floor), found 29"]


def test_unknown_keys_and_bad_values_name_the_key(tmp_path: Path) -> None:
    text = GOOD.replace('transport = "udp"', 'transport = "quic"\ncolour = "red"')
    text = text.replace("segment_seconds = 30", "segment_seconds = 5")
    out = problems(tmp_path, text)
    assert "cameras[0](gate).colour: unknown key (not part of the schema)" in out
    assert "cameras[0](gate).transport: expected 'tcp' or 'udp', found 'quic'" in out
    assert "cameras[0](gate).segment_seconds: expected greater than or equal to 10, found 5" in out


def test_missing_required_key(tmp_path: Path) -> None:
    out = problems(tmp_path, "[retention]\ndays = 30\n")
    assert out == ["storage: required key is missing"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("Gate", "must match [a-z0-9_-]{1,64}, found 'Gate'"), ("a" * 65, "must match")],
)
def test_bad_camera_names(tmp_path: Path, name: str, fragment: str) -> None:
    out = problems(tmp_path, GOOD.replace('name = "gate"', f'name = "{name}"'))
    assert any(fragment in p for p in out), out


def test_duplicate_camera_names(tmp_path: Path) -> None:
    text = GOOD + '[[cameras]]\nname = "gate"\nurl = "rtsp://10.0.0.6/x"\n'
    out = problems(tmp_path, text)
    assert any("used twice" in p for p in out), out


def test_credentials_in_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    text = GOOD.replace("rtsp://10.0.0.5:554/stream1", "rtsp://admin:s3cret@10.0.0.5/stream1")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "s3cret" not in str(info.value)
    assert "must not contain credentials" in str(info.value)


def test_wrong_url_scheme(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("rtsp://10.0.0.5:554/stream1", "http://10.0.0.5/"))
    assert any("found scheme 'http'" in p for p in out), out


def test_not_toml(tmp_path: Path) -> None:
    out = problems(tmp_path, "[storage\nroot=1")
    assert out[0].startswith("not valid TOML")


def test_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, GOOD))
    monkeypatch.delenv("GATE_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="GATE_PASSWORD to be set"):
        config.camera("gate").password()
    monkeypatch.setenv("GATE_PASSWORD", "pw1")
    assert config.camera("gate").password() == "pw1"
    secret = tmp_path / "pw"
    secret.write_text("pw2\n", encoding="utf-8")
    text = GOOD.replace('password_env = "GATE_PASSWORD"', f'password_file = "{secret}"')
    assert load_config(write(tmp_path, text)).camera("gate").password() == "pw2"


def test_per_camera_retention_only_longer(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD + "retention_days = 31\n")
    assert any("may only lengthen the window (45), found 31" in p for p in out), out


def test_default_config_has_demo_camera(tmp_path: Path) -> None:
    config = default_config(tmp_path / "d")
    assert [c.name for c in config.cameras] == ["demo"]
    assert config.retention.days == 30


# --- values that used to pass check-config and fail at run time (issue 11, item 9) ---------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "rtsp://10.0.0.5:554/stream1",
            "rtsp://10.0.0.5:99999/stream1",
            "cameras[0](gate).url: has an invalid port (expected 1-65535)",
        ),
        (
            "days = 45",
            "days = 1e12",
            "retention.days: expected a valid integer, found 1000000000000.0",
        ),
        (
            "days = 45",
            "days = 1000000000000",
            "retention.days: expected less than or equal to 36500, found 1000000000000",
        ),
        ("days = 45", "days = true", "retention.days: expected a valid integer, found True"),
        (
            "segment_seconds = 30",
            "segment_seconds = 30\nretention_days = true",
            "cameras[0](gate).retention_days: expected a valid integer, found True",
        ),
        (
            "segment_seconds = 30",
            "segment_seconds = 30.0",
            "cameras[0](gate).segment_seconds: expected a valid integer, found 30.0",
        ),
        (
            "segment_seconds = 30",
            "segment_seconds = 30\nenabled = 1",
            "cameras[0](gate).enabled: expected a valid boolean, found 1",
        ),
        ('root = "rec"', 'root = ""', "storage.root: must name a folder, found an empty string"),
        (
            'root = "rec"',
            'root = "rec"\nreserve_bytes = 9223372036854775807',
            "storage.reserve_bytes: expected less than or equal to 1125899906842624, "
            "found 9223372036854775807",
        ),
        (
            'root = "rec"',
            'root = "rec"\nreserve_bytes = true',
            "storage.reserve_bytes: expected a valid integer, found True",
        ),
        (
            'root = "rec"',
            'root = "rec"\ndatabase_url = "not a url"',
            "storage.database_url: is not a database URL "
            "(expected e.g. postgresql+psycopg://host/db or sqlite:///path)",
        ),
        (
            'root = "rec"',
            'root = "rec"\ndatabase_url = "nosuchdb://host/nvr"',
            "storage.database_url: names an unknown database dialect 'nosuchdb'",
        ),
        (
            'root = "rec"',
            'root = "rec"\ndatabase_url = "mssql+pyodbc://host/nvr"',
            "storage.database_url: needs the Python driver of 'mssql+pyodbc', "
            "which is not installed (pyodbc)",
        ),
        (
            'root = "rec"',
            'root = "rec"\ndatabase_url = "sqlite://:99999/x"',
            "storage.database_url: has an invalid port (expected 1-65535), found 99999",
        ),
    ],
)
def test_run_time_failures_are_refused_naming_the_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    assert problems(tmp_path, GOOD.replace(old, new, 1)) == [expected]


def test_onvif_port_out_of_range_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('url = "rtsp://10.0.0.5:554/stream1"', 'onvif = "http://10.0.0.7:70000"')
    assert problems(tmp_path, text) == [
        "cameras[0](gate).onvif: has an invalid port (expected 1-65535)"
    ]


def test_reserve_larger_than_the_filesystem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    size = os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    out = problems(tmp_path, GOOD.replace('root = "rec"', f'root = "rec"\nreserve_bytes = {size}'))
    assert out == [
        f"storage.reserve_bytes: expected less than the size of the filesystem holding "
        f"{(tmp_path / 'rec').resolve()} ({size} bytes), found {size}"
    ]
    # Below the filesystem's size it loads.
    text = GOOD.replace('root = "rec"', f'root = "rec"\nreserve_bytes = {size // 2}')
    assert load_config(write(tmp_path, text)).storage.reserve_bytes == size // 2


def test_database_url_password_is_never_echoed(tmp_path: Path) -> None:
    text = GOOD.replace('root = "rec"', 'root = "rec"\ndatabase_url = "foo://u:s3cret@h/db"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "s3cret" not in str(info.value)


def test_check_config_cli_refuses_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nvr.cli import main

    path = write(tmp_path, GOOD.replace("rtsp://10.0.0.5:554/", "rtsp://10.0.0.5:99999/"))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: invalid configuration" in err
    assert "cameras[0](gate).url: has an invalid port" in err
    assert "Traceback" not in err
