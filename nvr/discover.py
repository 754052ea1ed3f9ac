"""`nvr discover`: find ONVIF cameras on the local network with a WS-Discovery probe and print
ready-to-paste `[[cameras]]` blocks.

Owns the WS-Discovery client (one multicast Probe for `dn:NetworkVideoTransmitter` to
239.255.255.250:3702, sent twice, and the ProbeMatch answers that relate to it), parsing those
answers, and turning devices into config text. With a username (`--username` plus
`--password-env` or `--password-file`; never a password on the command line) each device is
also asked, through `ingest.onvif`, for its model and stream profiles.

Runs on the calling thread (the CLI's main thread): blocking sockets with a deadline for the
probe, then one short-lived event loop per device login (`ingest.onvif.run_bounded`).
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import unquote, urlsplit

from nvr.ingest.errors import StreamError
from nvr.ingest.onvif import DeviceInfo, MediaProfile, choose_profile, describe_device, run_bounded

WSD_GROUP = "239.255.255.250"
WSD_PORT = 3702
_NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
}
_PROBE = """<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" \
xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" \
xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" \
xmlns:dn="http://www.onvif.org/ver10/network/wsdl">
<s:Header>
<a:Action s:mustUnderstand="1">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>
<a:MessageID>{message_id}</a:MessageID>
<a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous\
</a:Address></a:ReplyTo>
<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>
</s:Header>
<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body>
</s:Envelope>
"""


@dataclass
class Discovered:
    """One device that answered the probe."""

    endpoint: str
    """Its WS-Addressing endpoint reference (a stable urn:uuid)."""
    xaddrs: list[str]
    scopes: list[str]
    sender: str
    """The IP address the answer came from."""
    info: DeviceInfo | None = None
    profiles: list[tuple[MediaProfile, str | None]] = field(default_factory=list)
    login_error: str | None = None

    @property
    def address(self) -> str:
        """The device address for `onvif =`: the first XAddr's scheme, host and port,
        preferring one on the address the answer came from."""
        chosen = next((x for x in self.xaddrs if urlsplit(x).hostname == self.sender), None)
        parts = urlsplit(chosen or (self.xaddrs[0] if self.xaddrs else f"http://{self.sender}"))
        return f"{parts.scheme}://{parts.netloc}"

    def scope(self, kind: str) -> str | None:
        """The value of an `onvif://www.onvif.org/<kind>/<value>` scope, URL-decoded."""
        prefix = f"onvif://www.onvif.org/{kind}/"
        for s in self.scopes:
            if s.startswith(prefix):
                return unquote(s[len(prefix) :])
        return None


def parse_probe_match(data: bytes, relates_to: str, sender: str) -> list[Discovered]:
    """The devices in one ProbeMatches answer to our probe (empty if it is something else)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return []
    relates = root.find("s:Header/a:RelatesTo", _NS)
    if relates is None or (relates.text or "").strip() != relates_to:
        return []
    out = []
    for match in root.iter(f"{{{_NS['d']}}}ProbeMatch"):
        # wsa:EndpointReference per the standard; some devices put it in the discovery ns.
        endpoint = (
            match.findtext("a:EndpointReference/a:Address", "", _NS)
            or match.findtext("d:EndpointReference/a:Address", "", _NS)
        ).strip()
        xaddrs = match.findtext("d:XAddrs", "", _NS).split()
        scopes = match.findtext("d:Scopes", "", _NS).split()
        if xaddrs or endpoint:
            out.append(Discovered(endpoint or sender, xaddrs, scopes, sender))
    return out


def probe(timeout_s: float, interface: str | None = None) -> list[Discovered]:
    """Send a WS-Discovery Probe and collect the answers for `timeout_s` seconds."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    payload = _PROBE.format(message_id=message_id).encode("utf-8")
    found: dict[str, Discovered] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # this link only
        if interface is not None:
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
            )
            sock.bind((interface, 0))
        deadline = time.monotonic() + timeout_s
        sends = [time.monotonic(), time.monotonic() + min(0.5, timeout_s / 3)]  # UDP may drop
        while True:
            now = time.monotonic()
            if sends and now >= sends[0]:
                sends.pop(0)
                sock.sendto(payload, (WSD_GROUP, WSD_PORT))
            left = deadline - now
            if left <= 0:
                break
            wait = min(left, sends[0] - now) if sends else left
            ready, _, _ = select.select([sock], [], [], max(0.0, wait))
            if not ready:
                continue
            try:
                data, (sender, _port) = sock.recvfrom(65535)
            except OSError:
                continue  # e.g. an ICMP error for an earlier datagram: keep listening
            for device in parse_probe_match(data, message_id, sender):
                found.setdefault(device.endpoint, device)
    return sorted(found.values(), key=lambda d: socket.inet_aton(d.sender))


def login(device: Discovered, username: str, password: str | None, timeout_s: float) -> None:
    """Fill in `info` and `profiles` (or `login_error`) by asking the device over ONVIF."""
    try:
        device.info, device.profiles = run_bounded(
            describe_device(device.address, username, password), timeout_s, device.address
        )
    except StreamError as err:
        device.login_error = f"{err.cause}: {err}"


def camera_name(device: Discovered, taken: set[str]) -> str:
    """A config-valid, unique camera name from the device's name scope or its address."""
    base = device.scope("name") or (device.info.model if device.info else "") or device.sender
    slug = re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-")[:56] or "camera"
    name, n = slug, 2
    while name in taken:
        name, n = f"{slug}-{n}", n + 1
    taken.add(name)
    return name


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def camera_block(device: Discovered, name: str, username: str | None) -> str:
    """A `[[cameras]]` block for the config file."""
    env = re.sub(r"[^A-Z0-9]+", "_", name.upper()) + "_PASSWORD"
    lines = ["[[cameras]]", f"name = {_toml(name)}", f"onvif = {_toml(device.address)}"]
    if username:
        lines += [f"username = {_toml(username)}", f"password_env = {_toml(env)}"]
    else:
        lines += ['# username = "admin"', f"# password_env = {_toml(env)}"]
    usable = [p for p, uri in device.profiles if uri is not None]
    if usable:
        try:
            best = choose_profile(usable, None)
        except StreamError:
            best = None
        if best is not None:
            others = ", ".join(p.describe() for p in usable if p is not best)
            lines.append(
                f"profile = {_toml(best.token)}  # {best.width}x{best.height} {best.encoding}"
                + (f"; others: {others}" if others else "")
            )
    return "\n".join(lines)


def report(devices: list[Discovered], username: str | None, out: TextIO) -> None:
    if not devices:
        print("no ONVIF devices answered", file=out)
        return
    taken: set[str] = set()
    blocks = []
    for device in devices:
        print(f"{device.address}  ({device.endpoint})", file=out)
        for xaddr in device.xaddrs:
            print(f"  xaddr: {xaddr}", file=out)
        if device.scopes:
            print("  scopes:", file=out)
            for scope in device.scopes:
                print(f"    {scope}", file=out)
        if device.info is not None:
            print(f"  device: {device.info.describe()}", file=out)
        for profile, uri in device.profiles:
            print(f"  profile {profile.describe()}: {uri or 'no RTSP stream'}", file=out)
        if device.login_error:
            print(f"  login failed: {device.login_error}", file=out)
        blocks.append(camera_block(device, camera_name(device, taken), username))
    print("\n# Ready to paste into the config file:\n", file=out)
    print("\n\n".join(blocks), file=out)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `nvr discover`."""
    p = sub.add_parser("discover", help="find ONVIF cameras (WS-Discovery) and print config")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers")
    p.add_argument("--interface", help="IPv4 address of the interface to probe from")
    p.add_argument("--username", help="log in to each device to list model and profiles")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-env", help="environment variable holding the password")
    secret.add_argument("--password-file", type=Path, help="file holding the password")
    p.set_defaults(func=cmd_discover)


def cmd_discover(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("discover: --timeout must be positive", file=sys.stderr)
        return 2
    password: str | None = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            print(f"discover: environment variable {args.password_env} is not set", file=sys.stderr)
            return 2
    elif args.password_file:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            print(f"discover: cannot read {args.password_file}: {err.strerror}", file=sys.stderr)
            return 2
    try:
        devices = probe(args.timeout, args.interface)
    except OSError as err:
        print(f"discover: cannot send the probe: {err.strerror or err}", file=sys.stderr)
        return 1
    if args.username:
        for device in devices:
            login(device, args.username, password, timeout_s=max(5.0, args.timeout * 2))
    report(devices, args.username, sys.stdout)
    return 0
