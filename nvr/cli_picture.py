"""`nvr tamper-check`: replay the picture detector (`ingest.picture.replay`) over a camera's
recorded footage and print what it finds, with the camera's `[cameras.picture]` thresholds
from the config, so a site can tune them on its own cameras. Read-only; beside a running
daemon. Runs on the main thread."""

from __future__ import annotations

import argparse

from nvr import show
from nvr.cli_context import config_command, opened
from nvr.cli_retention import _camera, backwards, parse_time
from nvr.config.models import PictureConfig
from nvr.ingest.picture.detector import CONDITIONS, PictureChange
from nvr.ingest.picture.replay import replay
from nvr.show import when


def cmd_tamper_check(args: argparse.Namespace) -> int:
    if backwards(args, "tamper-check"):
        return 2
    with opened(args) as (config, store):
        cam = _camera(config, store, args.camera)
        configured = next((c for c in config.cameras if c.name == cam), None)
        settings = configured.picture if configured is not None else PictureConfig()
        segments = store.segments(cam, args.start, args.end)
        print(
            f"{cam}: {show.count(len(segments), 'segment')} from {when(args.start)} to "
            f"{when(args.end)}; a keyframe every {settings.check_seconds:g} s, raised after "
            f"{settings.persist_seconds:g} s, reference learned over "
            f"{settings.learn_seconds:g} s"
        )

        def told(at_ms: int, change: PictureChange) -> None:
            if change.state in CONDITIONS:
                print(
                    f"{when(at_ms)}  {change.state} raised (first seen "
                    f"{when(round(change.onset * 1000))}, score {change.score:.3f}): "
                    f"{change.detail}"
                )
            elif change.previous in CONDITIONS:
                print(
                    f"{when(at_ms)}  {change.previous} cleared (gone since "
                    f"{when(round(change.onset * 1000))})"
                )
            else:
                print(f"{when(at_ms)}  {change.previous} -> {change.state}")

        report = replay(segments, args.start, args.end, settings, told)
    kinds = sorted({f.kind for f in report.findings})
    print(
        f"{show.count(report.checks, 'keyframe')} checked "
        f"({report.cpu_seconds:.1f} s CPU, {report.undecodable} undecodable); "
        f"{show.count(len(report.findings), 'finding')}"
        + (f" ({', '.join(kinds)})" if kinds else "")
        + f"; state at the end: {report.final_state}"
    )
    return 1 if report.findings else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = config_command(
        sub,
        "tamper-check",
        "replay the picture checks (covered, defocused, re-pointed, frozen, no signal) over "
        "recorded footage; exits 1 when something was found",
    )
    p.add_argument("camera")
    p.add_argument("--from", dest="start", type=parse_time, required=True)
    p.add_argument("--to", dest="end", type=parse_time, required=True)
    p.set_defaults(func=cmd_tamper_check)
