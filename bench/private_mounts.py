"""Shared by the bench scripts: they mount a tmpfs, which must stay in a private mount namespace."""
import sys


def require_private_mounts(prog):
    """Exits unless / is a private mount here (run inside `unshare -m --propagation private`)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == "/":
                if any(p.startswith("shared:") for p in parts[6:parts.index("-")]):
                    sys.exit(f"{prog}: run me inside `unshare -m --propagation private` "
                             "(the tmpfs must not leak)")
                return
