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
