"""The daemon: wiring of config, storage, ingest, retention and the API, the `nvr` CLI and
the process lifespan. `daemon` (the lifespan on the event loop), `reload` (SIGHUP and
`POST /api/reload`), `sdnotify` and `memory` (the service manager and the process), `events`,
`mqtt` and `webhooks` (stream events sent out), `gb28181/` (the GB/T 28181 device), `cli*`,
`show`, `clock_status` and `discover` (the `nvr` commands and their text).

Also the one namespace the project installs under: `nvr.config`, `nvr.storage`, `nvr.ingest`,
`nvr.retention` and `nvr.api` are the top-level folders of the checkout, linked here.

Imports go down: `nvr`'s own modules import every other folder, and none of those imports a
module of `nvr/` (tests/test_layout.py checks it)."""
