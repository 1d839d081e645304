"""The README's gateway examples run as written (ports aside): curl against a real
``postkey serve`` and postkey's local test server."""

from __future__ import annotations

import re
from pathlib import Path

from .gateway_process import free_port
from .shell_examples import example_env, run_example_script

README = Path(__file__).resolve().parents[1] / "README.md"


def gateway_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## An HTTP gateway for other languages", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def test_the_gateway_section_has_curl_examples() -> None:
    blocks = gateway_blocks()
    assert blocks and "curl" in blocks[0] and "postkey serve" in blocks[0]


def test_the_curl_examples_run_as_written(tmp_path: Path) -> None:
    script = "\n".join(gateway_blocks())
    script = script.replace("8787", str(free_port())).replace("8788", str(free_port()))
    done = run_example_script(script, tmp_path, example_env())
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}"
    assert '{"status":"ok"}' in out
    assert '{"key":"order-42"}' in out
    assert '"state":"done"' in out and '"status":200' in out and "signup" in out
    assert "hello" in out
    assert '"from": "mychat"' in out  # the echoed query, as MemCacheGet's text
