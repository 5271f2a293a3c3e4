"""Architecture boundaries that fail the build when broken.

policy ← sync ← client; inside sync/, device and gateway build on protocol and never on each
other; the laptop (client/) never imports the gateway or anything else on the never-ship list
(client/never_ship.py), which the build, the self-test and verify.py all use; Qt (PySide6)
only inside client/ui; keyrings.alt never a dependency.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from client.never_ship import never_ships

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str, root: Path = ROOT) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for path in sorted((root / package).rglob("*.py")):
        if {".venv", "node_modules"} & set(path.relative_to(root).parts):
            continue  # a third-party server's own environment (tests/support/sekmet/.venv)
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


def test_sync_device_and_gateway_never_import_each_other() -> None:
    assert _offenders("sync/device", ("sync.gateway", "client")) == []
    assert _offenders("sync/gateway", ("sync.device", "client")) == []


def test_sync_protocol_imports_neither_device_nor_gateway() -> None:
    assert _offenders("sync/protocol", ("sync.device", "sync.gateway", "client")) == []


def test_every_sync_module_lives_in_one_of_the_three_rooms() -> None:
    """sync/ holds protocol/, device/ and gateway/ only: no fourth place for code to drift to."""
    loose = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "sync").rglob("*.py")
        if path.relative_to(ROOT / "sync").parts[0] not in {"protocol", "device", "gateway"}
        and path.name != "__init__.py"
    )
    assert loose == []


def test_client_never_imports_the_gateway() -> None:
    assert _offenders("client", ("sync.gateway",)) == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_laptop_code_never_imports_what_must_not_ship() -> None:
    """Every module that ships (all of policy/, sync/, client/ but the never-ship list) imports
    nothing on that list, so the frozen bundle can leave it out without breaking an import."""
    offenders = []
    for package in ("policy", "sync", "client"):
        for path, name in _imports(package):
            if never_ships(_module_name(path)):
                continue  # an admin tool or the gateway itself
            if never_ships(name):
                offenders.append(f"{path.relative_to(ROOT).as_posix()} imports {name}")
    assert offenders == []


def test_the_never_ship_list_is_the_only_one() -> None:
    """The spec, the self-test and verify.py read client/never_ship.py and keep no list of their
    own (four hand-written lists had drifted apart before)."""
    users = {
        "packaging/gatehouse.spec": "from client.never_ship import",
        "client/selftest/bundle.py": "from client.never_ship import",
        "packaging/verify.py": "from client.never_ship import",
    }
    for relative, needle in users.items():
        text = (ROOT / relative).read_text(encoding="utf-8")
        assert needle in text, relative
        assert '"uvicorn"' not in text and '"sync.gateway"' not in text, relative
    assert never_ships("sync.gateway.store.sqlite")
    assert never_ships("policy.cli") and never_ships("keyrings.alt")
    assert not never_ships("sync.gateways") and not never_ships("sync.device.engine")


def test_tests_share_helpers_only_through_tests_support() -> None:
    """A test module imports helpers from tests.support, never from another test module or a
    conftest file (a module may name itself, for a subprocess to import)."""
    offenders = []
    for path, name in _imports("tests"):
        if not name.startswith("tests.") or name.startswith("tests.support"):
            continue
        if name != _module_name(path):
            offenders.append(f"{path.relative_to(ROOT).as_posix()} imports {name}")
    assert offenders == []


# Exceptions that are deliberately not their package's base error: bugs by design (the UI's
# boundary shows them as "something went wrong"), control flow that never leaves a module,
# and the policy admin CLI's own usage errors.
_NOT_CLASSIFIED = {
    "client.core.audit_log.AuditLogError",
    "client.core.outbox.OutboxStateError",
    "client.core.records.TransactionRequired",
    "policy.strictjson.StrictJSONError",  # always turned into PolicyRefused("malformed")
    "policy.cli.UsageError",
    "policy.cli.OperationError",
}


def _exception_classes(package: str) -> list[type[BaseException]]:
    import importlib
    import inspect

    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        name = _module_name(path)
        if never_ships(name) and not name.startswith(("sync.gateway", "policy.cli")):
            continue
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, BaseException)
                and cls.__module__ == name
                and not cls.__name__.startswith("_")
            ):
                found.append(cls)
    return found


def test_each_package_has_one_base_error() -> None:
    """So the UI's error boundary and each CLI catch one type per package."""
    from client.core.errors import GatehouseError
    from policy.errors import PolicyRefused
    from sync.device.errors import DeviceError
    from sync.gateway.errors import GatewayError
    from sync.protocol.errors import ProtocolError

    bases: dict[str, type[BaseException]] = {
        "sync/protocol": ProtocolError,
        "sync/device": DeviceError,
        "sync/gateway": GatewayError,
        "client/core": GatehouseError,
        "policy": PolicyRefused,
    }
    strays = []
    for package, base in bases.items():
        for cls in _exception_classes(package):
            qualified = f"{cls.__module__}.{cls.__name__}"
            if not issubclass(cls, base) and qualified not in _NOT_CLASSIFIED:
                strays.append(f"{qualified} is not a {base.__name__}")
    assert strays == []


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
