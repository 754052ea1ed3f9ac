"""`[gb28181]` and the cameras' `gb_channel_id` (config.models): the issue's key names load,
channel ids are derived and unique, and every bad key is named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvr.config import ConfigError, load_config
from nvr.config.checks import gb28181_problems
from nvr.gb28181.device import channels_of

GB = """
[gb28181]
device_id = "50010000001110000001"
domain = "5001000000"
server_id = "50010000002000000001"
server_host = "10.0.0.9"
server_port = 5060
password_env = "GB_PASSWORD"
transport = "udp"
local_port = 5060
register_expires = 3600
keepalive_seconds = 60
"""

CAMERAS = """
[[cameras]]
name = "gate"
url = "rtsp://10.0.0.5/s"
{gate}
[[cameras]]
name = "lobby"
url = "rtsp://10.0.0.6/s"
{lobby}
[[cameras]]
name = "yard"
url = "rtsp://10.0.0.7/s"
"""


def write(tmp_path: Path, gb: str, gate: str = "", lobby: str = "") -> Path:
    path = tmp_path / "nvr.toml"
    text = '[storage]\nroot = "data"\n' + gb + CAMERAS.format(gate=gate, lobby=lobby)
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, gb: str, gate: str = "", lobby: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, gb, gate, lobby))
    return info.value.problems


def test_the_issue_example_loads_and_channels_are_derived(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GB, lobby='gb_channel_id = "50010000001319999999"'))
    gb = config.gb28181
    assert gb is not None
    assert (gb.device_id, gb.domain, gb.server_id) == (
        "50010000001110000001",
        "5001000000",
        "50010000002000000001",
    )
    assert (gb.server_host, gb.server_port, gb.transport, gb.local_port) == (
        "10.0.0.9",
        5060,
        "udp",
        5060,
    )
    assert (gb.register_expires, gb.keepalive_seconds) == (3600, 60)
    assert config.gb_channel_ids() == {
        "gate": "50010000001310000001",
        "lobby": "50010000001319999999",
        "yard": "50010000001310000003",
    }


def test_password_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, GB))
    monkeypatch.delenv("GB_PASSWORD", raising=False)
    assert gb28181_problems(config) == [
        "gb28181.password_env: expected environment variable GB_PASSWORD to be set"
    ]
    monkeypatch.setenv("GB_PASSWORD", "s3cret")
    assert gb28181_problems(config) == []
    assert config.gb28181 is not None and config.gb28181.password() == "s3cret"
    secret = tmp_path / "gb.pw"
    secret.write_text("from-file\n", encoding="utf-8")
    gb = GB.replace('password_env = "GB_PASSWORD"', f'password_file = "{secret}"')
    config = load_config(write(tmp_path, gb))
    assert config.gb28181 is not None and config.gb28181.password() == "from-file"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'device_id = "50010000001110000001"',
            'device_id = "5001000000111000000"',
            "gb28181.device_id: expected 20 digits",
        ),
        (
            'device_id = "50010000001110000001"',
            'device_id = "5001000000111000000X"',
            "gb28181.device_id: expected 20 digits",
        ),
        (
            'server_id = "50010000002000000001"',
            "server_id = 50010000002000000001",
            "gb28181.server_id: expected a valid string",
        ),
        ('domain = "5001000000"', 'domain = "50010"', "gb28181.domain: expected 10 digits"),
        ('transport = "udp"', 'transport = "sctp"', "gb28181.transport: expected 'udp' or 'tcp'"),
        ("server_port = 5060", "server_port = 70000", "gb28181.server_port: expected"),
        ("register_expires = 3600", "register_expires = 5", "gb28181.register_expires: expected"),
        ("keepalive_seconds = 60", "keepalive_seconds = 0", "gb28181.keepalive_seconds: expected"),
        ('password_env = "GB_PASSWORD"', "", "gb28181: give password_env or password_file"),
        (
            "local_port = 5060",
            "local_prot = 5060",
            "gb28181.local_prot: unknown key (not part of the schema); did you mean 'local_port'?",
        ),
        (
            'server_host = "10.0.0.9"',
            'server_host = "sip://10.0.0.9"',
            "gb28181.server_host: expected an IP address or host name",
        ),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GB
    found = problems(tmp_path, GB.replace(old, new))
    assert any(p.startswith(expected) for p in found), found


def test_channel_ids_must_be_20_digits_and_unique(tmp_path: Path) -> None:
    found = problems(tmp_path, GB, gate='gb_channel_id = "123"')
    assert found[0].startswith("cameras[0](gate).gb_channel_id: expected 20 digits"), found
    # lobby's explicit id is the one derived for the third camera (yard)
    found = problems(tmp_path, GB, lobby='gb_channel_id = "50010000001310000003"')
    assert "50010000001310000003" in found[0] and "unique" in found[0], found
    found = problems(tmp_path, GB, gate='gb_channel_id = "50010000001110000001"')
    assert "device_id or server_id" in found[0], found


def test_channel_id_without_gb28181_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "", gate='gb_channel_id = "50010000001310000001"')
    assert "needs a [gb28181] table" in found[0], found


def test_a_camera_with_privacy_masks_is_a_masked_channel_unless_the_platform_is_unmasked(
    tmp_path: Path,
) -> None:
    mask = "[[cameras.privacy_masks]]\npoints = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]\n"
    offered = 'cameras = ["gate", "lobby", "yard"]\n'
    config = load_config(write(tmp_path, GB + offered, gate=mask))
    assert config.gb28181 is not None and config.gb28181.unmasked is False
    assert {c.camera: c.masked for c in channels_of(config)} == {
        "gate": True,
        "lobby": False,
        "yard": False,
    }
    config = load_config(write(tmp_path, GB + offered + "unmasked = true\n", gate=mask))
    assert not any(c.masked for c in channels_of(config))


def test_cameras_offered_to_the_platform_are_named(tmp_path: Path) -> None:
    """`[gb28181] cameras` lists existing cameras once each; absent, it offers none."""
    config = load_config(write(tmp_path, GB))
    assert config.gb28181 is not None and config.gb28181.cameras == ()
    config = load_config(write(tmp_path, GB + 'cameras = ["yard", "gate"]\n'))
    assert config.gb28181 is not None and config.gb28181.cameras == ("yard", "gate")
    found = problems(tmp_path, GB + 'cameras = ["gate", "nope"]\n')
    assert any("no camera is called 'nope'" in p for p in found), found
    found = problems(tmp_path, GB + 'cameras = ["gate", "gate"]\n')
    assert any("'gate' is listed twice" in p for p in found), found
