"""Adds 1 to the number in a file N times, each under an exclusive lock: fcntl or flock,
on a descriptor opened for each increment ("reopen") or kept open ("kept"). The writes are
plain pwrite, never fsync: the unlock alone must publish them."""
import fcntl
import os
import sys

path, count, kind, how = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def lock(fd, op):
    if kind == "flock":
        fcntl.flock(fd, op)
    else:
        fcntl.lockf(fd, op)


fd = os.open(path, os.O_RDWR) if how == "kept" else None
for _ in range(count):
    f = fd if fd is not None else os.open(path, os.O_RDWR)
    lock(f, fcntl.LOCK_EX)
    value = int(os.pread(f, 32, 0).decode().strip() or "0")
    os.pwrite(f, f"{value + 1:<20}".encode(), 0)
    lock(f, fcntl.LOCK_UN)
    if fd is None:
        os.close(f)
