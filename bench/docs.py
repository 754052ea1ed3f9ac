"""Writing a benchmark's generated block into docs/benchmarks.md, keeping hand-written text.

Each bench owns one section heading and a pair of HTML comment markers; only the text between
its markers is replaced on a re-run. Runs on the bench's main thread."""

from __future__ import annotations

from pathlib import Path

NEW_FILE = (
    "# Benchmarks\n\nMeasurements of the recorder on real streams; each section "
    "says how to reproduce it.\n"
)


def update_doc(path: Path, section: str, begin: str, end: str, body: str) -> None:
    """Replace the block between `begin` and `end` under `section` in `path` with `body`
    (adding the section, or the file, if missing); everything else is kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{begin}\n{body}{end}"
    if section not in text:
        text = (text or NEW_FILE).rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    else:
        head, rest = text.split(section, 1)
        if begin in rest and end in rest:
            before, after = rest.split(begin, 1)
            _old, after = after.split(end, 1)
            rest = before + block + after
        else:
            rest = f"\n\n{block}\n" + rest
        text = head + section + rest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def publish(body: str, path: Path, section: str, begin: str, end: str, *, write: bool) -> None:
    """Print a run's block and, when `write` (no `--no-doc`), put it in `path` as
    `update_doc` does."""
    print(body)
    if write:
        update_doc(path, section, begin, end, body)
        print(f"updated {path}")
