"""The process table of this Linux machine, read from /proc (for the tests that check nothing is
left running after a kill)."""
from __future__ import annotations

import os


def processes() -> dict[int, dict]:
    """pid -> {ppid, state, session, start (clock ticks since boot), cmd} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        out[int(d)] = {"ppid": int(fields[1]), "state": fields[0], "session": int(fields[3]),
                       "start": fields[19], "cmd": cmd}
    return out
