"""Time checks (R8, "keep the running time accurate"): the server's own clock, each camera's
clock, and steps of the server clock under a running recorder. One module per thing:

- `steps`: `ClockStepDetector` notices the server's wall clock jumping by comparing its
  progress with the monotonic clock's. Pure; the recorder feeds it on its thread.
- `notes`: `CameraClockReading` and `ClockNotes`, where findings go: `events` rows
  (`clock-offset`, `device-info`), audit rows (`clock-warning` / `clock-recovered`) when a
  camera's offset or the server's sync state crosses into or out of a warning. Thread-safe.
- `rtcp`: a camera's clock from RTCP sender reports (`RtcpClockProbe`), and the opener and
  source decorators that feed it on the recorder thread (`ClockedOpener`, `ClockedSource`).
- `monitor`: `ClockMonitor`, one thread (`clock-check`) that reads the server clock every
  minute and runs the camera checks that are due (ONVIF cameras: on each connect and hourly).

The ONVIF clock check lives in `ingest.onvif`; the lines `nvr status` prints from these
findings in `nvr.clock_status`. Segment times themselves are not decided here: the recorder
takes wall-clock starts from the server clock and durations from media timestamps, and uses
`ClockStepDetector` so a step never makes segments overlap or go backwards.

The server clock's sync state itself (`adjtimex(2)`, read-only) is read by
`storage.server_clock`, below this package: the retention clock evidence needs it too.

Imports go down: `ingest.sources` (the `Source`/`StreamOpener` seam) and `storage` (the index
the notes go to); `ingest.recorder`, `ingest.onvif` and `ingest.supervisor` import this.
"""
