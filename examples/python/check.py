#!/usr/bin/env python3
"""CI check of the Python example: runs it against a real server and compares its output.

    python3 examples/python/check.py target/debug/inventory-sync
"""

import pathlib
import subprocess
import sys

from local_server import local_server

EXPECTED = """\
sync: received=3 created=3 updated=0 unchanged=0 cleared=0
sync with clear: received=2 created=0 updated=0 unchanged=2 cleared=1
product 10005: in_stock=0 match_status=MATCH_STATUS_PENDING
"""


def main():
    binary = pathlib.Path(sys.argv[1]).resolve()
    example = pathlib.Path(__file__).resolve().parent / "sync_example.py"
    with local_server(binary) as address:
        result = subprocess.run(
            [sys.executable, example, "--server", address, "--store", "7"],
            capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or result.stdout != EXPECTED:
        print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
        sys.exit(f"the Python example printed other than expected:\n{EXPECTED}")
    print("python example: ok")
    sys.stdout.write(result.stdout)


if __name__ == "__main__":
    main()
