"""Peak RSS growth while a response is capped: an endless chunked stream and a gzip bomb.

Each case runs in a fresh process: peak RSS after the request minus RSS before it, against the
target cap + 32 MiB. Usage: python bench/memory_bounds.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAP = 10 * 1024 * 1024

# The hostile server runs in this process; the client alone in the child, so the child's peak
# RSS is the client's own.
CHILD = """
import json, resource, sys
sys.path[:0] = [{src!r}]
from postkey import Client
client = Client(max_response_bytes={cap}, decompress={decompress})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = client.wait(client.get_async({url!r}, timeout_ms=120000))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
client.close()
print(json.dumps({{"kind": result.error_kind, "growth_mib": (after - before) / 1024}}))
"""


def main() -> None:
    sys.path[:0] = [str(ROOT)]
    from tests.servers import HostileServer

    server = HostileServer().start()
    print(f"| response (cap {CAP // 2**20} MiB) | ends as | peak RSS growth | target |")
    print("|---|---|---:|---:|")
    for name, path, decompress in (
        ("endless chunked stream", "/forever", False),
        ("gzip bomb (256 MiB inflated), decoded", "/gzip-bomb", True),
        ("brotli bomb (256 MiB inflated), decoded", "/br-bomb", True),
    ):
        code = CHILD.format(
            src=str(ROOT / "src"), cap=CAP, decompress=decompress, url=server.url + path
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {row['kind']} | {row['growth_mib']:.1f} MiB | <= {CAP // 2**20 + 32} MiB |"
        )


if __name__ == "__main__":
    main()
