"""Run in a child process by tests/test_clock_health.py: load a seccomp allow-list (syscall
names on stdin, one a line; everything else fails with EPERM, as the unit's
`SystemCallErrorNumber=EPERM`), then read the server clock's sync state the way the daemon
does. Prints `ok <synchronised>` or `error <errno>`; exit 0 either way, 3 if the filter
could not be loaded.

Uses libseccomp (Debian libseccomp2, a dependency of systemd) through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import sys

from nvr.storage.server_clock import read_server_clock

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def main() -> int:
    names = [line.strip() for line in sys.stdin if line.strip()]
    read_server_clock()  # loads libc before the filter (the daemon has it loaded long before)
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | errno.EPERM)
    if not ctx:
        return 3
    for name in names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # not a syscall of this architecture
        lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0)
    if lib.seccomp_load(ctx) != 0:
        return 3
    try:
        state = read_server_clock()
    except OSError as err:
        print(f"error {err.errno}", flush=True)
        return 0
    print(f"ok {state.synchronised}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
