"""The README's code works: every ```python block compiles, names only what postkey has (with
call arguments the functions accept) and runs as written, offline (the blocks start
`postkey.testing` themselves; a `print(...)  # shown` comment is checked against the output);
names the prose cites in backticks (`postkey.wait(`, `DestinationPolicy.public_only(`) exist;
the shell examples run in bash and the console example prints what it shows. The README is read
when the tests are collected, so edits are checked on the next run."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import re
import socket
import subprocess
import symtable
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import postkey
from postkey import mychat

from .shell_examples import example_env, run_example_script

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE_RE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SPAN_RE = re.compile(r"`([^`]+)`")
# A dotted name rooted at the package, not inside a path or URL (postkey/_policy.py, x.postkey.io).
_DOTTED_RE = re.compile(r"(?<![\w./@-])postkey(?:\.[A-Za-z_]\w*)+")
_CALLED_RE = re.compile(r"(?<![\w.])([A-Z]\w*)(?:\.([A-Za-z_]\w*))?\s*\(")
# Settings reach Client and AsyncClient through **overrides: their names are the fields.
_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(postkey.Settings))
_TAKES_SETTINGS = (postkey.Client, postkey.AsyncClient)


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = _readme()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in _FENCE_RE.finditer(text)
        if m.group(1).strip().lower() in ("python", "py", "python3")
    ]


def prose_spans() -> list[tuple[int, str]]:
    """(line number, text) of every inline code span outside fenced blocks."""
    text = _FENCE_RE.sub(lambda m: "\n" * m.group(0).count("\n"), _readme())
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _SPAN_RE.finditer(text)]


# The names prose may use without an import: the package and its public capitalised names
# (classes, MyChat functions). Lower-case bare names in prose are usually methods
# (`close(timeout=s)`), so they are not looked up.
IMPLICIT: dict[str, Any] = {
    "postkey": postkey,
    **{n: getattr(postkey, n) for n in postkey.__all__ if n[:1].isupper()},
    **{n: getattr(mychat, n) for n in mychat.__all__ if n[:1].isupper()},
}


def _lookup(obj: Any, attr: str, dotted: str) -> Any:
    if hasattr(obj, attr):
        return getattr(obj, attr)
    if isinstance(obj, ModuleType):  # a submodule not imported yet (postkey.cli)
        try:
            return importlib.import_module(f"{obj.__name__}.{attr}")
        except ImportError:
            pass
    raise LookupError(f"{dotted} does not exist")


def _resolve_dotted(dotted: str) -> Any:
    root, *attrs = dotted.split(".")
    obj = IMPLICIT[root]
    for i, attr in enumerate(attrs):
        obj = _lookup(obj, attr, ".".join([root, *attrs[: i + 1]]))
    return obj


class _Checker(ast.NodeVisitor):
    """Collects what a piece of code names from postkey that does not exist or cannot be called
    that way. ``names`` maps the names bound to postkey objects (imports, or prose's implicit
    ones) to those objects."""

    def __init__(self, names: dict[str, Any], *, prose: bool = False) -> None:
        self.names = dict(names)
        self.prose = prose
        self.problems: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != "postkey":
                continue
            try:
                module = importlib.import_module(alias.name)
            except ImportError:
                self.problems.append(f"import {alias.name}: no such module")
                continue
            if alias.asname:
                self.names[alias.asname] = module
            else:
                self.names["postkey"] = postkey

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module is None or node.module.split(".")[0] != "postkey":
            return
        try:
            module = importlib.import_module(node.module)
        except ImportError:
            self.problems.append(f"from {node.module} import ...: no such module")
            return
        for alias in node.names:
            if alias.name == "*":
                exported = getattr(module, "__all__", [])
                self.names.update({n: getattr(module, n, None) for n in exported})
                continue
            try:
                obj = _lookup(module, alias.name, f"{node.module}.{alias.name}")
            except LookupError as exc:
                self.problems.append(f"from {node.module} import {alias.name}: {exc}")
                continue
            self.names[alias.asname or alias.name] = obj

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._resolve(node)

    def visit_Call(self, node: ast.Call) -> None:
        target = self._resolve(node.func)
        if target is not None:
            self._check_arguments(node, target)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(arg)
        if not isinstance(node.func, ast.Name | ast.Attribute):
            self.visit(node.func)

    def _resolve(self, node: ast.expr) -> Any:
        """The postkey object ``node`` names (recording a problem if it does not exist), or
        None when it is not rooted at a postkey name."""
        chain: list[str] = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.names:
            if self.prose and isinstance(node, ast.Name) and _unknown_class(node.id):
                # Prose has no imports: a capitalised name must be postkey's (or a builtin).
                self.problems.append(f"{node.id} does not exist")
            self.generic_visit(node)
            return None
        obj = self.names[node.id]
        dotted = node.id
        for attr in reversed(chain):
            dotted += f".{attr}"
            try:
                obj = _lookup(obj, attr, dotted)
            except LookupError as exc:
                self.problems.append(str(exc))
                return None
        return obj

    def _check_arguments(self, node: ast.Call, target: Any) -> None:
        if not callable(target):
            return
        starred = any(isinstance(a, ast.Starred) for a in node.args)
        keywords = {k.arg: None for k in node.keywords if k.arg is not None}
        if target in _TAKES_SETTINGS:
            unknown = set(keywords) - _SETTING_NAMES
            if unknown:
                self.problems.append(f"{target.__name__}() has no setting {sorted(unknown)}")
            return
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return
        if starred or any(k.arg is None for k in node.keywords):
            # Only the explicit keywords can be checked.
            accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            unknown = set() if accepts_any else set(keywords) - set(signature.parameters)
            if unknown:
                self.problems.append(f"{_name(target)}() takes no {sorted(unknown)}")
            return
        try:
            signature.bind(*[None] * len(node.args), **keywords)
        except TypeError as exc:
            self.problems.append(f"{_name(target)}{signature}: {exc}")


def _unknown_class(name: str) -> bool:
    return name[:1].isupper() and name not in IMPLICIT and not hasattr(builtins, name)


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", repr(obj))


def free_names(code: str) -> set[str]:
    """Names the code reads without binding them itself (builtins excluded)."""
    top = symtable.symtable(code, "<readme>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    bound |= {s.get_name() for s in top.get_symbols() if s.is_namespace()}
    free: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for sym in table.get_symbols():
            outer = table is top or sym.is_global()
            if sym.is_referenced() and outer and sym.get_name() not in bound:
                free.add(sym.get_name())
    return free - set(dir(builtins))


BLOCKS = python_blocks()
SPANS = prose_spans()


def test_the_readme_has_python_examples() -> None:
    assert BLOCKS, "no ```python block found in README.md"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_python_blocks_compile_and_name_only_what_postkey_has(line: int, code: str) -> None:
    tree = compile(code, f"README.md:{line}", "exec", ast.PyCF_ONLY_AST)
    checker = _Checker({})
    checker.visit(tree)
    # A capitalised postkey name the block reads without binding would be a NameError for
    # whoever copies the block (lower-case placeholders such as `url` are the reader's own).
    unimported = sorted(n for n in free_names(code) if n in IMPLICIT or _unknown_class(n))
    problems = checker.problems + [f"uses {n} without importing it" for n in unimported]
    assert not problems, f"README.md block at line {line}: {problems}"


def test_every_python_block_is_self_contained() -> None:
    # Every example must run as copied: no names the reader would have to supply.
    needing = {line: sorted(free_names(code)) for line, code in BLOCKS if free_names(code)}
    assert not needing, f"README blocks (by line) read undefined names: {needing}"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_python_blocks_run_as_written(line: int, code: str, tmp_path: Path) -> None:
    # As written: no URL is rewritten; the blocks start postkey.testing themselves.
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"README.md block at line {line} failed:\n{done.stderr}"
    for expected in re.findall(r"print\(.*\)\s*#\s*(.+)$", code, re.MULTILINE):
        assert expected.strip() in done.stdout, f"line {line}: expected {expected!r} in output"


def shell_blocks(kind: str = "sh") -> list[tuple[int, str]]:
    text = _readme()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in _FENCE_RE.finditer(text)
        if m.group(1).strip() == kind
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# The shell examples that talk to the local server on port 8765, in README order: the Quickstart
# starts the server, the CLI section uses it. Run together, in one bash, as written except for
# the port (a free one, so that a busy 8765 cannot fail the test).
LIVE_SHELL = [(line, code) for line, code in shell_blocks() if "8765" in code]


def test_the_readme_has_live_shell_examples() -> None:
    assert len(LIVE_SHELL) >= 2 and "python -m postkey.testing 8765 &" in LIVE_SHELL[0][1]


def test_shell_examples_run_as_written(tmp_path: Path) -> None:
    port = str(_free_port())
    script = "\n".join(code.replace("8765", port) for _, code in LIVE_SHELL)
    # Each example line must succeed; the server the first block starts goes at the end.
    done = run_example_script(script, tmp_path, example_env(home=tmp_path))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    assert '"signup"' in out  # the Quickstart's POST, printed with --wait
    assert '"state": "done"' in out and "exit 22" in out  # --format json; --fail on a 503
    assert out.count('"line"') >= 2 or out.count('"state": "done"') >= 3  # the batch's results


def test_console_examples_print_what_they_show(tmp_path: Path) -> None:
    blocks = shell_blocks("console")
    assert blocks
    for line, block in blocks:
        command, *shown = block.strip().splitlines()
        assert command.startswith("$ "), f"line {line}: a console block starts with '$ '"
        done = subprocess.run(
            ["bash", "-c", command[2:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
            env=example_env(home=tmp_path),
        )
        assert (done.stdout + done.stderr).strip() == "\n".join(shown).strip(), f"line {line}"


def test_every_option_in_the_cli_synopsis_exists() -> None:
    synopsis = next(code for _, code in shell_blocks() if code.startswith("postkey post URL"))
    for row in synopsis.splitlines():
        words = row.split()
        if words[:1] != ["postkey"] or words[1].startswith("-"):
            continue
        helptext = subprocess.run(
            [sys.executable, "-m", "postkey", words[1], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for option in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", row):
            assert option in helptext, f"postkey {words[1]} has no option {option}"


def _span_problems(text: str) -> list[str]:
    try:
        tree: ast.AST | None = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        try:
            tree = ast.parse(text.strip(), mode="exec")
        except SyntaxError:
            tree = None
    if tree is not None:
        checker = _Checker(IMPLICIT, prose=True)
        checker.visit(tree)
        return checker.problems
    # Not Python (`JSONGetString(json, name, var out): integer`): look the names up only.
    problems: list[str] = []
    dotted = [m.group() for m in _DOTTED_RE.finditer(text)]
    for name, attr in _CALLED_RE.findall(text):
        if name in IMPLICIT:
            dotted.append(f"{name}.{attr}" if attr else name)
        elif _unknown_class(name):
            problems.append(f"{name} does not exist")
    for item in dotted:
        try:
            _resolve_dotted(item)
        except LookupError as exc:
            problems.append(str(exc))
    return problems


def test_names_cited_in_the_readme_prose_exist() -> None:
    problems = [
        f"line {line}: `{text}`: {problem}"
        for line, text in SPANS
        if _DOTTED_RE.search(text) or _CALLED_RE.search(text)
        for problem in _span_problems(text)
    ]
    assert not problems, "\n".join(problems)


def test_the_prose_checker_catches_what_does_not_exist() -> None:
    # The checks above pass vacuously if the checker sees nothing: prove that it does.
    assert _span_problems("postkey.post_async(url, body)") == []
    assert _span_problems("postkey.no_such_function(url)") == [
        "postkey.no_such_function does not exist"
    ]
    assert _span_problems("DestinationPolicy.public_only(allow=())") == []
    assert _span_problems("DestinationPolicy.public_only(permit=())")
    assert _span_problems("Client(max_in_flight=4)") == []
    assert _span_problems("Client(max_inflight=4)")
    assert _span_problems("NoSuchClass(1): string") == ["NoSuchClass does not exist"]
    assert _span_problems("NoSuchPolicy.public_only(allow=())") == ["NoSuchPolicy does not exist"]
    assert _span_problems("MemCacheSet(AKey, AValue, ATimeToLive=0)") == []
    checker = _Checker({})
    checker.visit(ast.parse("from postkey import Clent\nimport postkey\npostkey.wiat(1)"))
    assert len(checker.problems) == 2
    assert free_names("import postkey\nx = postkey.get(key)\nasync def f():\n    return y") == {
        "key",
        "y",
    }
