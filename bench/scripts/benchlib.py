"""Helpers shared by the benchmark scripts in this folder."""

import os
import socket
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROG = os.path.splitext(os.path.basename(sys.argv[0]))[0]


def die(msg, code=2):
    """Print `msg` prefixed with the script's name and exit with `code`."""
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(code)


def wait_port(port, timeout=30):
    """Wait until something accepts TCP connections on 127.0.0.1:`port`."""
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    die(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
