"""Architecture boundaries that fail the build when broken.

policy ← sync ← client; Qt (PySide6) only inside client/ui; keyrings.alt never a dependency.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str, root: Path = ROOT) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.extend((path, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
    return found


def _offenders(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root).as_posix()} imports {name}"
        for path, name in _imports(package, root)
        if name.split(".")[0] in forbidden or name in forbidden
    ]


def test_no_qt_outside_client_ui() -> None:
    offenders = []
    for package in ("policy", "sync", "client/core", "packaging"):
        offenders += _offenders(package, ("PySide6", "shiboken6", "PyQt5", "PyQt6"))
    for path, name in _imports("client"):
        inside_ui = "ui" in path.relative_to(ROOT / "client").parts[:1]
        if name.split(".")[0] == "PySide6" and not inside_ui:
            offenders.append(f"{path.relative_to(ROOT).as_posix()} imports {name}")
    assert offenders == []


def test_inside_client_ui_only_the_shim_imports_qt() -> None:
    offenders = [
        f"{path.relative_to(ROOT).as_posix()} imports {name}"
        for path, name in _imports("client/ui")
        if name.split(".")[0] == "PySide6" and path.name != "qt.py"
    ]
    assert offenders == []


def test_policy_imports_neither_sync_nor_client() -> None:
    assert _offenders("policy", ("sync", "client")) == []


def test_sync_never_imports_client() -> None:
    assert _offenders("sync", ("client",)) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """Guard against a checker that silently finds nothing."""
    pkg = tmp_path / "policy"
    pkg.mkdir()
    (pkg / "bad.py").write_text("from client.core import vault\nimport PySide6.QtCore\n")
    assert _offenders("policy", ("sync", "client"), tmp_path) == [
        "policy/bad.py imports client.core"
    ]
    assert _offenders("policy", ("PySide6",), tmp_path) == ["policy/bad.py imports PySide6.QtCore"]


def test_keyrings_alt_is_never_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    names = [
        d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower() for d in declared
    ]
    assert not {"keyrings.alt", "keyrings-alt", "keyrings_alt"} & set(names)


def test_keyrings_alt_is_not_installed() -> None:
    """Installed, keyrings.alt silently makes a plaintext file the default keyring."""
    import importlib.util

    assert importlib.util.find_spec("keyrings") is None or (
        importlib.util.find_spec("keyrings.alt") is None
    )
