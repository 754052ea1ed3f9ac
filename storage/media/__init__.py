"""Container formats of the footage: what the bytes of a file mean, apart from where the file
lives and what the index says about it (that is `storage.store`'s).

- `boxes`: ISO BMFF (MP4) boxes: the one box walker (in a buffer, and over a file's
  top-level boxes) and the box writer.
- `segment`: a recorded fragmented segment's sample index, read from its boxes.
- `sampleindex`: the compact codec the index database keeps a sample index in.
- `hevc`: H.265 sample entries rewritten as Apple's players want them.
- `virtual`: planning and writing virtual (non-fragmented) MP4 files of any range, for
  playback and export, as a header plus byte ranges of the segment files.
- `fragments`: how much of a fragmented MP4 is complete (salvage after a crash).
- `package` + `cover`: the signed evidence export package (a ZIP) and its cover sheet.

Later formats (GB/T 28181's MPEG-PS muxer) live here too.

Pure functions and value types plus blocking file reads: they run on whichever thread calls
them (worker threads under the API, the store's start-up recovery, the CLI), never on the
event loop. Imports go down only: the standard library, numpy, `storage.signing`; nothing of
`api`, `ingest` or `nvr` (they import this).
"""
