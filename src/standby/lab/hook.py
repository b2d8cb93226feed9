"""The lab's address-change hook: records where clients are told the primary went.

On a real site this would update DNS or call a cloud API; here it appends
`<time> <node> <address>` to a file the demo and the tests read.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: hook.py LOGFILE NODE ADDRESS", file=sys.stderr)
        return 2
    log, node, address = argv
    with open(log, "a") as f:
        f.write(f"{datetime.now(UTC).isoformat()} {node} {address}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
