"""Ingest: pulling camera streams and remuxing them into segments, one thread per camera.

`Supervisor` (event loop) owns `CameraRecorder`s (one thread each); `StreamOpener`s are the
seam between a recorder and where packets come from (RTSP or the built-in test pattern).

One module per thing: `supervisor` (the loop side: recorders, repair, the watchdog),
`recorder` (a camera's thread: connect, remux, cut segments), `status` (what a recorder
reports), `sources` (the opener seam; RTSP cameras, falling back to FFmpeg's demuxer),
`rtsp_session` / `rtsp_auth` / `rtsp_source` (our own RTSP client: the wire, its logins,
its PyAV packets), `rtp` (RTP payloads into frames), `testpattern` (the built-in camera),
`onvif` (ONVIF cameras, discovery), `timecheck/` (server and camera clocks), `timeline`
(media time onto wall-clock time), `tap` (a camera's recorded packets for live view and
picture checks), `substream` (a camera's `live_url`, pulled only while watched live, never
recorded), `watchdog`, `progress`, `redact`, `errors`.

Imports go down: `ingest` uses `storage` (segments and the index) and `config`'s values;
`nvr` wires it, and `api` reads only `status`, `timecheck`'s findings and `tap`'s frames.
This file imports nothing, so importing those never loads the recorder: import from the
modules.
"""
