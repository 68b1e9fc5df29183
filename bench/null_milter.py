"""The protocol's own cost: a pymilter milter that does nothing and accepts at end of message.

It asks Postfix for the same events as mxhook-milter, with the same no-reply flags (connect,
helo, envfrom, header and body without replies; envrcpt, eoh and eom with replies), so the
difference between this and mxhook-milter is mxhook's own work, not a different negotiation.

    python3 bench/null_milter.py unix:/path/to/null.sock [--group postfix]
"""
from __future__ import annotations

import argparse
import grp
import os
import sys
import threading
import time

import Milter


@Milter.header_leading_space
class NullMilter(Milter.Base):
    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, heloname):
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        return Milter.ACCEPT

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def _fix_permissions(path: str, group: str) -> None:
    gid = grp.getgrnam(group).gr_gid if group else -1
    for _ in range(1000):
        if os.path.exists(path):
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
            return
        time.sleep(0.01)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("socket", help="milter socket spec, e.g. unix:/tmp/x/null.sock")
    ap.add_argument("--group", default="postfix", help="group that may use the socket")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args(argv)
    path = args.socket.split(":", 1)[1] if args.socket.startswith(("unix:", "local:")) else None
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        os.umask(0o117)
        threading.Thread(target=_fix_permissions, args=(path, args.group), daemon=True).start()
    Milter.factory = NullMilter
    Milter.set_flags(Milter.DELRCPT)  # same negotiation as mxhook-milter
    Milter.runmilter("nullmilter", args.socket, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
