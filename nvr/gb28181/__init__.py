"""GB/T 28181 device interface (issue 19, requirement R9): the recorder registers with a
police video platform as a lower-level device, keeps the registration alive, answers its
queries (catalog, device info and status, recorded spans) and streams live and recorded
video to it as RTP/MPEG-PS.

Everything here runs on the daemon's event loop (`GbDevice.start`/`stop` from
`nvr.daemon`); blocking work (index queries, segment reads) goes through
`asyncio.to_thread`, and live frames arrive from the recorder threads' packet taps via
`loop.call_soon_threadsafe`. Modules: `sip` (transport, transactions, Digest), `manscdp`
(the XML bodies), `device` (registration, keepalive, queries, dialogs), `ps` (the MPEG-PS
muxer), `rtp` (packetising and sending), `media` (live and recorded sources).

Imports: `nvr.config`, `nvr.storage`, `nvr.ingest.tap`; nothing imports this package but
`nvr.daemon` (and tests).
"""
