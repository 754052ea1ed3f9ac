"""The cover sheet of an evidence package, for a recipient (police, a court) who has only the
package: `README.txt` and `cover.html` (one printable page), in Chinese and English, made
from the package's manifest. Each says what the footage is (site, camera and where it looks,
the range in local time with its UTC offset and in UTC, the outages inside it with their
causes), who released it on whose authority (both persons and work ids, purpose, recipient,
approval document), which files it holds with their sha256, and how to check all of that
with standard tools (sha256sum, openssl, any video player).

Pure functions (text in, bytes out); no I/O; any thread. Imports nothing of the project;
`storage.media.package` writes what it makes, `api.exports` uses its local-time helpers.
"""

# ruff: noqa: RUF001
# (Chinese text uses full-width punctuation, as it should.)

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

README = "README.txt"
COVER = "cover.html"
SUMS = "SHA256SUMS"


def zone(name: str | None) -> tzinfo | None:
    """The site's zone; None for the system's."""
    return ZoneInfo(name) if name else None


def local_time(ms: int, tz: tzinfo | None) -> str:
    """`2026-11-22 16:00:03.120 +08:00`: local wall-clock time with its UTC offset."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    dt = dt.astimezone(tz) if tz is not None else dt.astimezone()
    text = dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    offset = dt.strftime("%z")
    return f"{text} {offset[:3]}:{offset[3:]}"




def zone_label(name: str | None, ms: int) -> str:
    if name:
        return name
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone()
    return f"system zone {dt.tzname() or ''}".strip()


def _outage_lines(outages: Sequence[dict[str, Any]]) -> list[str]:
    if not outages:
        return ["  none / 无"]
    out = []
    for o in outages:
        end = o.get("end_local") or "still open / 仍未恢复"
        seconds = o.get("seconds")
        length = f" ({seconds:.1f} s)" if isinstance(seconds, int | float) else ""
        detail = f": {o['detail']}" if o.get("detail") else ""
        out.append(f"  {o['start_local']} .. {end}{length}  {o['cause']}{detail}")
        out.append(f"      UTC {o['start']} .. {o.get('end') or '-'}")
    return out


def _masks(manifest: dict[str, Any]) -> dict[str, Any] | None:
    masks = manifest.get("privacy_masks")
    return masks if isinstance(masks, dict) and masks.get("applied") else None


def _polygon(points: Sequence[Sequence[float]]) -> str:
    return " ".join(f"({x:g},{y:g})" for x, y in points)


def _footage_lines(manifest: dict[str, Any]) -> list[str]:
    """Step 4 of the text cover: what the footage files are. A masked export (privacy masks,
    R10) holds no original segments, so it says what it does hold instead."""
    masks = _masks(manifest)
    if masks is None:
        return [
            "  4. recording.mp4 is the whole range as one standard MP4 for viewing (VLC,",
            "     QuickTime, browsers); the files in segments/ are the original recordings,",
            "     byte for byte, and are the evidence. / recording.mp4 供观看；segments/ 中为",
            "     原始录像文件（逐字节一致），为证据原件。",
        ]
    return [
        "  4. PRIVACY MASKS APPLIED / 已加隐私遮挡. recording.mp4 is the whole range as one",
        "     standard MP4, decoded and re-encoded (H.264) with the areas below filled black.",
        "     This package holds NO original recordings: they stay on the recorder, and the",
        "     sha256 of each original the copy was made from is kept here (and in",
        "     manifest.json, privacy_masks.originals) so they can be identified there.",
        "     recording.mp4 为经解码并重新编码（H.264）的录像，下列区域已涂黑。本包不含原始",
        "     录像文件：原件保存在录像设备上，下列 SHA-256 值（亦见 manifest.json 中",
        "     privacy_masks.originals）可用于在设备上识别原件。",
        "     Masked areas, normalised x,y (0..1) / 遮挡区域（归一化坐标 0..1）:",
        *[f"       {i}. {_polygon(p)}" for i, p in enumerate(masks.get("polygons", []), 1)],
        "     Originals, sha256 / 原始录像 SHA-256:",
        *[
            f"       {o['sha256']}  {o['file'].rsplit('/', 1)[-1]}  ({o['bytes']} bytes)"
            for o in masks.get("originals", [])
        ],
    ]


def _footage_html(manifest: dict[str, Any]) -> str:
    e = html.escape
    masks = _masks(manifest)
    if masks is None:
        return (
            "recording.mp4 for viewing; segments/ hold the original recordings (the evidence) /\n"
            "recording.mp4 供观看；segments/ 为原始录像（证据原件）"
        )
    polygons = "".join(
        f"<li><code>{e(_polygon(p))}</code></li>" for p in masks.get("polygons", [])
    )
    originals = "".join(
        f"<li><code>{e(o['sha256'])}</code> {e(o['file'].rsplit('/', 1)[-1])} "
        f"({o['bytes']} bytes)</li>"
        for o in masks.get("originals", [])
    )
    return (
        "<strong>Privacy masks applied / 已加隐私遮挡.</strong> recording.mp4 is decoded and "
        "re-encoded (H.264) with the areas below filled black; this package holds no original "
        "recordings: they stay on the recorder, identified by the sha256 values below (also in "
        "manifest.json, privacy_masks.originals). / recording.mp4 为经解码并重新编码的录像，"
        "下列区域已涂黑；本包不含原始录像文件，原件保存在录像设备上，可按下列 SHA-256 值识别。"
        f"<br>Masked areas, normalised x,y / 遮挡区域（归一化坐标）:<ol>{polygons}</ol>"
        f"Originals, sha256 / 原始录像 SHA-256:<ul>{originals}</ul>"
    )


def readme(manifest: dict[str, Any], files: Sequence[tuple[str, int, str]]) -> str:
    """The plain-text cover sheet. `files`: (name, bytes, sha256) of the footage files."""
    rng = manifest["range"]
    cam = manifest["camera_info"]
    req, appr = manifest["requester"], manifest["approver"]
    lines = [
        f"EVIDENCE EXPORT / 证据导出  No. {manifest['export_id']}",
        "=" * 72,
        f"Site / 站点:                 {manifest['site']['name'] or '-'}",
        f"Camera / 摄像机:             {cam['name']}",
        f"Location / 位置:             {cam['location'] or '-'}",
        f"Description / 说明:          {cam['description'] or '-'}",
        f"Recorder / 录像设备:         store {manifest['store_id']}",
        "",
        f"Range, local time / 时间范围（本地时间, {rng['zone']}）:",
        f"  {rng['start_local']}  ..  {rng['end_local']}",
        "Range, UTC / 时间范围（协调世界时 UTC）:",
        f"  {rng['start']}  ..  {rng['end']}",
        "",
        "Outages inside the range, with causes / 范围内的录像中断及原因:",
        *_outage_lines(manifest["outages"]),
        "  (recording.mp4 shows no picture during an outage: its time line stays true;",
        "   recording.mp4 在中断期间不显示画面，时间轴保持真实)",
        "",
        f"Requester / 申请人:          {req['user']}, work id / 工号 {req['work_id']}, "
        f"{req['at_local']}",
        f"Approver / 批准人:           {appr['user']}, work id / 工号 {appr['work_id']}, "
        f"{appr['at_local']}",
        f"Purpose / 用途:              {manifest['purpose']}",
        f"Recipient / 接收方及去向:    {manifest['recipient']}",
        f"Approval document / 审批文件: {manifest['approval_document']}",
        f"Built / 生成时间:            {manifest['built_local']}",
        "",
        "Files and their sha256 / 文件及其 SHA-256 值:",
        *[f"  {sha}  {name}  ({size} bytes)" for name, size, sha in files],
        "",
        "How to verify (standard tools only) / 如何核验（仅需标准工具）:",
        f"  1. sha256sum -c {SUMS}",
        "     Every line must end in OK. / 每一行都必须显示 OK。",
        "  2. openssl pkeyutl -verify -pubin -inkey signing-key.pub -rawin \\",
        "       -in manifest.json -sigfile manifest.sig",
        "     Must print 'Signature Verified Successfully'. manifest.json lists every file",
        "     with its sha256, so this proves that nothing was changed since it was signed.",
        "     必须显示 'Signature Verified Successfully'。manifest.json 列出所有文件及其",
        "     SHA-256 值，签名有效即证明签名后未被修改。",
        "  3. The key in signing-key.pub proves integrity, not origin: compare its",
        "     fingerprint with the one the recorder's operator gives you independently:",
        "     签名公钥的指纹须与录像单位另行提供的指纹一致:",
        "       openssl pkey -pubin -in signing-key.pub -outform DER | tail -c 32 | sha256sum",
        f"     = {manifest['signing_key_sha256']}",
        *_footage_lines(manifest),
        "",
    ]
    return "\n".join(lines)


def cover_html(manifest: dict[str, Any], files: Sequence[tuple[str, int, str]]) -> str:
    """The same facts as one printable HTML page (A4)."""
    e = html.escape
    rng = manifest["range"]
    cam = manifest["camera_info"]
    req, appr = manifest["requester"], manifest["approver"]
    rows = [
        ("Site / 站点", manifest["site"]["name"] or "-"),
        ("Camera / 摄像机", cam["name"]),
        ("Location / 位置", cam["location"] or "-"),
        ("Description / 说明", cam["description"] or "-"),
        (
            f"Range, local time ({rng['zone']}) / 时间范围（本地时间）",
            f"{rng['start_local']} .. {rng['end_local']}",
        ),
        ("Range, UTC / 时间范围（UTC）", f"{rng['start']} .. {rng['end']}"),
        (
            "Requester / 申请人",
            f"{req['user']} (work id / 工号 {req['work_id']}), {req['at_local']}",
        ),
        (
            "Approver / 批准人",
            f"{appr['user']} (work id / 工号 {appr['work_id']}), {appr['at_local']}",
        ),
        ("Purpose / 用途", manifest["purpose"]),
        ("Recipient / 接收方及去向", manifest["recipient"]),
        ("Approval document / 审批文件", manifest["approval_document"]),
        ("Built / 生成时间", manifest["built_local"]),
    ]
    facts = "\n".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    if manifest["outages"]:
        outages = "\n".join(
            f"<tr><td>{e(o['start_local'])}</td><td>{e(o.get('end_local') or '-')}</td>"
            f"<td>{e(o['cause'])}</td><td>{e(o.get('detail') or '')}</td></tr>"
            for o in manifest["outages"]
        )
    else:
        outages = '<tr><td colspan="4">none / 无</td></tr>'
    listing = "\n".join(
        f"<tr><td><code>{e(name)}</code></td><td>{size}</td><td><code>{sha}</code></td></tr>"
        for name, size, sha in files
    )
    return f"""<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<title>Evidence export {manifest["export_id"]} / 证据导出</title>
<style>
@page {{ size: A4; margin: 12mm; }}
body {{ font: 10pt sans-serif; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 8pt; }}
th, td {{ border: 1px solid #999; padding: 2pt 4pt; text-align: left; vertical-align: top; }}
th {{ width: 30%; background: #eee; }}
code {{ font-size: 7pt; word-break: break-all; }}
</style>
</head>
<body>
<h1>Evidence export No. {manifest["export_id"]} / 证据导出</h1>
<table>
{facts}
</table>
<h2>Outages inside the range / 范围内的录像中断</h2>
<table>
<tr><th>from / 起</th><th>to / 止</th><th>cause / 原因</th><th>detail / 详情</th></tr>
{outages}
</table>
<h2>Files / 文件 (sha256)</h2>
<table>
<tr><th>file / 文件</th><th>bytes / 字节</th><th>sha256</th></tr>
{listing}
</table>
<h2>How to verify / 如何核验</h2>
<ol>
<li><code>sha256sum -c {SUMS}</code>: every line OK / 每行均为 OK</li>
<li><code>openssl pkeyutl -verify -pubin -inkey signing-key.pub -rawin -in manifest.json
-sigfile manifest.sig</code>: "Signature Verified Successfully"</li>
<li>Key fingerprint / 公钥指纹 (<code>openssl pkey -pubin -in signing-key.pub -outform DER
| tail -c 32 | sha256sum</code>): <code>{e(manifest["signing_key_sha256"])}</code>,
to be confirmed with the recorder's operator / 须与录像单位核对</li>
<li>{_footage_html(manifest)}</li>
</ol>
</body>
</html>
"""
