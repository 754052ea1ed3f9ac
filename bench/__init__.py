"""Benchmarks: scripts that measure the recorder against real streams on this machine.

Each module is runnable (``python -m bench.<name>``), prints what it measured and how, and
writes its results into its own section of ``docs/benchmarks.md``. Nothing here is imported
by the daemon or the tests.
"""
