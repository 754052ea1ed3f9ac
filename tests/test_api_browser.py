"""`recording.mp4` in a real browser: headless Chromium loads a page with a `<video>` element
whose source is a signed playback link, reads its metadata, seeks into the middle (HTTP
Range requests) and plays. Skips when Debian's `chromium` is not installed."""

from __future__ import annotations

import http.server
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_rig import CHROMIUM, HEADLESS, Api, contiguous_trio

WAIT_S = 5.0

PAGE = """<!doctype html>
<html><head><title>player</title></head><body>
<video id="v" muted playsinline preload="auto" src="{src}"></video>
<pre id="out">waiting</pre>
<img id="gate" alt="" src="/wait">
<script>
const v = document.getElementById("v");
const out = document.getElementById("out");
const log = [];
let seekedAt = null;
function show() {{ out.textContent = log.join("\\n"); }}
v.addEventListener("loadedmetadata", () => {{
  log.push("meta " + v.duration.toFixed(3) + " " + v.videoWidth + "x" + v.videoHeight);
  v.currentTime = v.duration / 2;
  show();
}});
v.addEventListener("seeked", () => {{
  if (seekedAt !== null) return;
  seekedAt = v.currentTime;
  log.push("seeked " + v.currentTime.toFixed(3));
  v.play().then(() => {{ log.push("playing"); show(); }},
                e => {{ log.push("play-error " + e); show(); }});
  show();
}});
// The page's load event (and so Chromium's DOM dump) waits for this image, which the page
// server answers after a few real seconds: meanwhile the video plays.
document.getElementById("gate").addEventListener("error", () => {{
  log.push("played " + (seekedAt === null ? -1 : v.currentTime - seekedAt).toFixed(3));
  log.push("frames " + v.getVideoPlaybackQuality().totalVideoFrames);
  log.push("done");
  show();
}});
v.addEventListener("error", () => {{
  log.push("error " + (v.error ? v.error.code + " " + v.error.message : "?"));
  show();
}});
</script></body></html>
"""


class _Page(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path == "/wait":
            time.sleep(WAIT_S)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_recording_plays_and_seeks_in_a_browser_video_element(
    footage_api: Api, page_server: http.server.ThreadingHTTPServer, tmp_path: Path
) -> None:
    trio = contiguous_trio(footage_api.store, "h264aac")
    with footage_api.as_user("vera") as c:
        r = c.post(
            "/api/cameras/h264aac/links",
            json={"start": trio[0].start_ms + 3000, "end": trio[2].end_ms},
        )
        assert r.status_code == 200, r.text
    src = footage_api.base + r.json()["url"]
    _Page.body = PAGE.format(src=src.replace("&", "&amp;")).encode()
    port = page_server.server_address[1]
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            *HEADLESS,
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, re.S)
    assert found is not None, done.stdout[-2000:] + done.stderr[-2000:]
    lines = found.group(1).splitlines()
    assert not any(x.startswith("error") for x in lines), lines
    meta = next(x for x in lines if x.startswith("meta"))
    _, duration, size = meta.split()
    expected = (trio[2].end_ms - trio[0].start_ms - 3000) / 1000
    assert abs(float(duration) - expected) <= 1.01, (duration, expected)  # one GOP, ms rounding
    assert size == "640x360"
    seeked = float(next(x for x in lines if x.startswith("seeked")).split()[1])
    assert abs(seeked - float(duration) / 2) < 0.5
    assert "done" in lines, lines
    played = float(next(x for x in lines if x.startswith("played")).split()[1])
    assert 1.0 <= played <= WAIT_S, lines  # it played on from the seek, in real time
    assert int(next(x for x in lines if x.startswith("frames")).split()[1]) >= 10
    ranged = [
        e for e in footage_api.store.audit.entries(action="playback") if e.detail.get("range")
    ]
    assert ranged, "the browser fetched parts of the file with Range requests"
