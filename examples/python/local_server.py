"""A server of the checks in this folder: `inventory-sync serve` on a free port over a SQLite
file in a temporary directory, stopped on leaving the `with` block."""

import contextlib
import re
import subprocess
import sys
import tempfile
import threading


@contextlib.contextmanager
def local_server(binary):
    """Yields the address of a fresh server without authentication."""
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--insecure-no-auth",
             "--database-url", "check.db"],
            cwd=workdir, stderr=subprocess.PIPE, text=True)
        try:
            address = None
            for line in server.stderr:
                found = re.search(r"listen=(\S+)", line)
                if found:
                    address = found.group(1)
                    break
            if address is None:
                sys.exit("the server stopped before it listened")
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
            yield address
        finally:
            server.terminate()
            server.wait(timeout=30)
