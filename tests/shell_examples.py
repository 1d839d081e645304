"""Running the README's shell examples as a reader would: in bash, with this interpreter's
``postkey`` first on PATH and none of the developer's own POSTKEY_ settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def example_env(home: Path | None = None) -> dict[str, str]:
    """This environment less POSTKEY_ variables (a developer's own would change what the examples
    print), with this interpreter's scripts first on PATH; HOME moved to ``home`` if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKEY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_example_script(
    script: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Runs ``script`` in one bash: the first failing line fails it (set -e), and the servers it
    started in the background are killed when it ends, however it ends."""
    wrapped = f"set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"
    return subprocess.run(
        ["bash", "-c", wrapped],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=env,
    )
