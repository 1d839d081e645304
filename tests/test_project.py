"""Project basics a clone must have: the licence pyproject names, and an architecture document
that names every module there is (and none that is gone)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "postkey"


def test_the_license_file_is_the_one_pyproject_names() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "MIT" and text.startswith("MIT License")
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_the_architecture_document_names_every_module() -> None:
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).as_posix() != "__init__.py"
    }
    named = {n for n in re.findall(r"`((?:\w+/)?\w+\.py)`", doc) if not n.startswith("tests/")}
    assert modules - named == set(), "modules missing from docs/ARCHITECTURE.md"
    assert named - modules == set(), "docs/ARCHITECTURE.md names modules that do not exist"


def test_the_readme_links_only_to_files_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which is not here"


def test_the_suite_runs_on_the_build_it_says() -> None:
    # make test runs the suite twice: on src/ (pure Python) and, with TEST_ON_COMPILED_BUILD=1,
    # on the mypyc wheel. Each run must really be on its build, every listed module compiled.
    import importlib
    import os

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]["hooks"]["mypyc"]["include"]
    names = [p.removeprefix("/src/").removesuffix(".py").replace("/", ".") for p in listed]
    assert len(names) >= 10
    files = {name: str(importlib.import_module(name).__file__) for name in names}
    if os.environ.get("TEST_ON_COMPILED_BUILD") == "1":
        assert all(f.endswith(".so") for f in files.values()), files
        assert all(str(PACKAGE) not in f for f in files.values()), "compiled run imports src/"
    else:
        assert all(f.startswith(str(PACKAGE)) and f.endswith(".py") for f in files.values()), files
