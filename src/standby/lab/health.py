"""The sample softswitch's health check: GET its /health and exit 0 on 200, 1 otherwise.

The agent runs a service's health command at least once a second on the node that serves. Through the lab's
CLI it imported the whole lab (aiohttp, psycopg, pydantic): ~0.5 s of CPU a check, a quarter of a
two-core machine spent on asking "are you there?". So this module uses the standard library only, and
``standby.lab``'s package imports nothing until asked (see its ``__init__``).

    python -m standby.lab.health [--timeout S] [-q] URL
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def check_health(url: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """(healthy, one-line detail) from GET url."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200, resp.read(500).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}: {e.read(500).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as e:
        return False, str(getattr(e, "reason", e))


def main(argv: list[str]) -> int:
    quiet, timeout_s, args = False, 3.0, list(argv)
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("-q", "--quiet"):
            quiet = True
        elif opt == "--timeout" and args:
            try:
                timeout_s = float(args.pop(0))
            except ValueError:
                print("--timeout: expected seconds, e.g. --timeout 3", file=sys.stderr)
                return 2
        else:
            print(f"unknown option {opt}; usage: python -m standby.lab.health [--timeout S] [-q] URL", file=sys.stderr)
            return 2
    if len(args) != 1:
        print("usage: python -m standby.lab.health [--timeout S] [-q] URL", file=sys.stderr)
        return 2
    healthy, detail = check_health(args[0], timeout_s)
    if not quiet:
        print(f"{'healthy' if healthy else 'unhealthy'}: {detail}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
