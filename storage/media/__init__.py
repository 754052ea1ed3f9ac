"""Container formats of the footage: what the bytes of a file mean, apart from where the file
lives and what the index says about it (that is `storage.store`'s).

- `mp4`: ISO BMFF (MP4) boxes: reading a recorded fragmented segment's sample index, the
  compact codec the index keeps it in, and planning and writing virtual (non-fragmented) MP4
  files of any range for playback and export.
- `fragments`: how much of a fragmented MP4 is complete (salvage after a crash).
- `package` + `cover`: the signed evidence export package (a ZIP) and its cover sheet.

Later formats (GB/T 28181's MPEG-PS muxer) live here too.

Pure functions and value types plus blocking file reads: they run on whichever thread calls
them (worker threads under the API, the store's start-up recovery, the CLI), never on the
event loop. Imports go down only: the standard library, numpy, `storage.signing`; nothing of
`api`, `ingest` or `nvr` (they import this).
"""
