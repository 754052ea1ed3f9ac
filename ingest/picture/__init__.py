"""Picture health (issue 18, R8): is the camera covered, defocused, re-pointed, frozen or
showing no signal? One keyframe every `check_seconds`, from the recorder's own packets.

`detector` (pure numpy: measures, references, persistence and hysteresis), `decode` (PyAV:
one keyframe to a small grey picture, a JPEG snapshot), `monitor` (thread `picture-check`:
subscribes to every camera's packet tap, runs the checks, records and publishes the findings),
`replay` (the same detector over recorded footage, for `nvr tamper-check`).

This file imports nothing, so importing `detector` never loads PyAV.
"""
