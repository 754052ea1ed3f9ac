"""The daemon: wiring of config, storage and ingest, the `nvr` CLI and the process lifespan."""
