"""The daemon: wiring of config, storage and ingest, the `nvr` CLI and the process lifespan.

Also the one namespace the project installs under: `nvr.config`, `nvr.storage`, `nvr.ingest`,
`nvr.retention` and `nvr.api` are the top-level folders of the checkout, linked here."""
