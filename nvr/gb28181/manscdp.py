"""MANSCDP bodies (GB/T 28181-2016 appendix A, `Application/MANSCDP+xml`): parsing the
platform's queries and building our notifications and responses. Bodies are GB 18030 (a
superset of GB 2312, which platforms declare), so Chinese camera names survive; incoming
bodies are decoded by their declared encoding before parsing (expat takes no multi-byte
encodings of its own). Pure functions; called on the event loop.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

CONTENT_TYPE = "Application/MANSCDP+xml"
ENCODING = "GB18030"
_DECL = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9_-]+)[\"'][^>]*\?>")


class ManscdpError(ValueError):
    """A body that is not a MANSCDP document we can read."""


@dataclass(frozen=True)
class Query:
    """A platform's `<Query>` (or `<Control>`/`<Notify>`): its root tag, CmdType, SN,
    DeviceID and every other top-level field as text."""

    root: str
    cmd: str
    sn: str
    device_id: str
    fields: dict[str, str]


def decode_body(body: bytes) -> str:
    """The text of a body in whatever encoding it declares (GB2312/GBK are read as GB 18030,
    their superset); undeclared is taken as GB 18030 too, then UTF-8."""
    m = _DECL.match(body)
    declared = m.group(1).decode("ascii").lower() if m else ""
    text_part = body[m.end() :] if m else body
    if declared in ("gb2312", "gbk", "gb18030", ""):
        codec = "gb18030"
    else:
        codec = declared
    try:
        return text_part.decode(codec)
    except (LookupError, UnicodeDecodeError):
        try:
            return text_part.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ManscdpError(f"body is neither {declared or 'GB 18030'} nor UTF-8") from err


def parse(body: bytes) -> Query:
    """A MANSCDP document's root, command and fields (ManscdpError if it is not one)."""
    try:
        root = ET.fromstring(decode_body(body).strip())
    except ET.ParseError as err:
        raise ManscdpError(f"not XML: {err}") from err
    fields: dict[str, str] = {}
    for child in root:
        if len(child) == 0:
            fields[child.tag] = (child.text or "").strip()
    cmd = fields.get("CmdType", "")
    if not cmd:
        raise ManscdpError(f"<{root.tag}> without CmdType")
    return Query(root.tag, cmd, fields.get("SN", ""), fields.get("DeviceID", ""), fields)


def to_bytes(root: ET.Element) -> bytes:
    """`root` as a GB 18030 document with its declaration."""
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="{ENCODING}"?>\r\n{text}\r\n'.encode("gb18030")


def _sub(parent: ET.Element, tag: str, text: str | int) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = str(text)
    return el


def _head(kind: str, cmd: str, sn: str | int, device_id: str) -> ET.Element:
    root = ET.Element(kind)
    _sub(root, "CmdType", cmd)
    _sub(root, "SN", sn)
    _sub(root, "DeviceID", device_id)
    return root


def gb_time(ms: int, tz: tzinfo | None) -> str:
    """A GB/T 28181 time: local time without zone, `2026-12-02T14:40:16` (A.2.1)."""
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%dT%H:%M:%S")


def parse_gb_time(text: str, tz: tzinfo | None) -> int:
    """Milliseconds since the epoch of a GB/T 28181 local time (ManscdpError when bad)."""
    text = text.strip().replace(" ", "T")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as err:
        raise ManscdpError(f"bad time {text!r}") from err
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz) if tz is not None else dt.astimezone()
    return int(dt.timestamp() * 1000)


def keepalive(sn: int, device_id: str) -> bytes:
    root = _head("Notify", "Keepalive", sn, device_id)
    _sub(root, "Status", "OK")
    return to_bytes(root)


def media_status(sn: int, device_id: str, notify_type: int = 121) -> bytes:
    """`MediaStatus` notification; 121 = end of the file being played back (A.2.5)."""
    root = _head("Notify", "MediaStatus", sn, device_id)
    _sub(root, "NotifyType", notify_type)
    return to_bytes(root)


@dataclass(frozen=True)
class Channel:
    """One camera as a catalog item."""

    channel_id: str
    camera: str
    name: str
    address: str
    online: bool


def catalog(
    sn: str,
    device_id: str,
    civil_code: str,
    channels: Sequence[Channel],
    per_message: int,
) -> list[bytes]:
    """The catalog answer, split into messages of at most `per_message` items, each with
    the total in `SumNum` and its own count in `DeviceList Num` (A.2.6.4). At least one
    message (with Num=0) for a device with no channels."""
    out: list[bytes] = []
    chunks = [channels[i : i + per_message] for i in range(0, len(channels), per_message)] or [[]]
    for chunk in chunks:
        root = _head("Response", "Catalog", sn, device_id)
        _sub(root, "SumNum", len(channels))
        items = ET.SubElement(root, "DeviceList", Num=str(len(chunk)))
        for ch in chunk:
            item = ET.SubElement(items, "Item")
            _sub(item, "DeviceID", ch.channel_id)
            _sub(item, "Name", ch.name)
            _sub(item, "Manufacturer", "nvr")
            _sub(item, "Model", "camera")
            _sub(item, "Owner", "0")
            _sub(item, "CivilCode", civil_code)
            _sub(item, "Address", ch.address)
            _sub(item, "Parental", 0)
            _sub(item, "ParentID", device_id)
            _sub(item, "SafetyWay", 0)
            _sub(item, "RegisterWay", 1)
            _sub(item, "Secrecy", 0)
            _sub(item, "Status", "ON" if ch.online else "OFF")
        out.append(to_bytes(root))
    return out


def device_info(sn: str, device_id: str, name: str, version: str, channels: int) -> bytes:
    root = _head("Response", "DeviceInfo", sn, device_id)
    _sub(root, "DeviceName", name)
    _sub(root, "Result", "OK")
    _sub(root, "Manufacturer", "nvr")
    _sub(root, "Model", "nvr")
    _sub(root, "Firmware", version)
    _sub(root, "Channel", channels)
    return to_bytes(root)


def device_status(
    sn: str, device_id: str, *, online: bool, recording: bool, now_ms: int, tz: tzinfo | None
) -> bytes:
    """DeviceStatus (A.2.6.6) for the device or one channel; no alarms are reported."""
    root = _head("Response", "DeviceStatus", sn, device_id)
    _sub(root, "Result", "OK")
    _sub(root, "Online", "ONLINE" if online else "OFFLINE")
    _sub(root, "Status", "OK" if online else "ERROR")
    _sub(root, "Encode", "ON" if online else "OFF")
    _sub(root, "Record", "ON" if recording else "OFF")
    _sub(root, "DeviceTime", gb_time(now_ms, tz))
    ET.SubElement(root, "Alarmstatus", Num="0")
    return to_bytes(root)


@dataclass(frozen=True)
class Span:
    start_ms: int
    end_ms: int


def record_info(
    sn: str,
    channel_id: str,
    name: str,
    spans: Sequence[Span],
    tz: tzinfo | None,
    per_message: int,
) -> list[bytes]:
    """RecordInfo (A.2.6.7): one Item per recorded span (a gap starts a new span), split
    like the catalog."""
    out: list[bytes] = []
    chunks = [spans[i : i + per_message] for i in range(0, len(spans), per_message)] or [[]]
    for chunk in chunks:
        root = _head("Response", "RecordInfo", sn, channel_id)
        _sub(root, "Name", name)
        _sub(root, "SumNum", len(spans))
        items = ET.SubElement(root, "RecordList", Num=str(len(chunk)))
        for span in chunk:
            item = ET.SubElement(items, "Item")
            _sub(item, "DeviceID", channel_id)
            _sub(item, "Name", name)
            _sub(item, "FilePath", f"{channel_id}/{span.start_ms}-{span.end_ms}")
            _sub(item, "Address", "")
            _sub(item, "StartTime", gb_time(span.start_ms, tz))
            _sub(item, "EndTime", gb_time(span.end_ms, tz))
            _sub(item, "Secrecy", 0)
            _sub(item, "Type", "time")
        out.append(to_bytes(root))
    return out
