"""Build outputs (packaging/outputs.py, packaging/verify.py): the
manifest catches any changed, missing or added file, the SBOM names what was really bundled,
the tarball is deterministic. Real files in tmp_path; no PyInstaller run (too slow for a test:
``packaging/build.sh`` + ``packaging/verify.py`` do that end to end).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGING = ROOT / "packaging"


def _load(name: str) -> ModuleType:
    # packaging/ is not a package (it would shadow PyPI's "packaging"): load by path.
    if str(PACKAGING) not in sys.path:
        sys.path.insert(0, str(PACKAGING))
    spec = importlib.util.spec_from_file_location(f"gatehouse_{name}", PACKAGING / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


outputs = _load("outputs")
verify = _load("verify")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "dist" / "gatehouse"
    (root / "_internal" / "lib").mkdir(parents=True)
    (root / "gatehouse").write_bytes(b"\x7fELF executable")
    (root / "_internal" / "lib" / "libthing.so.1").write_bytes(b"library bytes" * 100)
    (root / "_internal" / "base_library.zip").write_bytes(b"zip")
    os.symlink("lib/libthing.so.1", root / "_internal" / "libthing.so.1")
    return root


def test_manifest_lists_every_file_sorted_in_sha256sum_format(bundle: Path) -> None:
    text = outputs.format_manifest(outputs.manifest_entries(bundle))
    paths = [line.split("  ", 1)[1] for line in text.splitlines()]
    assert (
        paths
        == sorted(paths)
        == [
            "gatehouse/_internal/base_library.zip",
            "gatehouse/_internal/lib/libthing.so.1",
            "gatehouse/_internal/libthing.so.1",
            "gatehouse/gatehouse",
        ]
    )
    assert outputs.parse_manifest(text) == outputs.manifest_entries(bundle)
    if shutil.which("sha256sum"):
        (bundle.parent / "gatehouse.sha256").write_text(text)
        subprocess.run(
            ["sha256sum", "--quiet", "-c", "gatehouse.sha256"], cwd=bundle.parent, check=True
        )


def test_manifest_comparison_catches_changed_missing_and_added_files(bundle: Path) -> None:
    expected = outputs.manifest_entries(bundle)
    assert outputs.compare_manifest(bundle, expected) == []
    (bundle / "_internal" / "base_library.zip").write_bytes(b"zap")
    (bundle / "gatehouse").unlink()
    (bundle / "_internal" / "sitecustomize.py").write_text("print('hello')")
    assert outputs.compare_manifest(bundle, expected) == [
        "missing: gatehouse/gatehouse",
        "not in manifest: gatehouse/_internal/sitecustomize.py",
        "changed: gatehouse/_internal/base_library.zip",
    ]


def test_a_symlink_leaving_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.so").write_bytes(b"not ours")
    os.symlink(tmp_path / "outside.so", bundle / "_internal" / "escape.so")
    with pytest.raises(outputs.BundleError) as caught:
        outputs.manifest_entries(bundle)
    assert caught.value.reason == "symlink_escapes"


@pytest.mark.parametrize(
    "line",
    [
        "abc  gatehouse/x",
        f"{'0' * 64} gatehouse/x",
        f"{'0' * 64}  /etc/passwd",
        f"{'0' * 64}  gatehouse/../../etc/passwd",
    ],
)
def test_malformed_manifest_lines_are_refused(line: str) -> None:
    with pytest.raises(outputs.BundleError) as caught:
        outputs.parse_manifest(line + "\n")
    assert caught.value.reason == "manifest_malformed"


def test_verify_reports_a_tampered_bundle(bundle: Path) -> None:
    manifest = bundle.parent / "gatehouse.sha256"
    manifest.write_text(outputs.format_manifest(outputs.manifest_entries(bundle)))
    assert verify.check_manifest(bundle, manifest) == []
    (bundle / "_internal" / "lib" / "libthing.so.1").write_bytes(b"trojan")
    assert verify.check_manifest(bundle, manifest) == [
        "changed: gatehouse/_internal/lib/libthing.so.1",
        "changed: gatehouse/_internal/libthing.so.1",
    ]


def test_sbom_names_the_bundled_distributions_and_nothing_else() -> None:
    import argon2
    import cryptography
    import keyring

    sources = [
        cryptography.__file__,
        argon2.__file__,
        keyring.__file__,
        json.__file__,  # stdlib
        str(ROOT / "policy" / "jws.py"),  # the project itself
    ]
    sbom = outputs.build_sbom(
        sources, version="v1-test", timestamp="2026-11-22T00:00:00Z", serial="urn:uuid:x"
    )
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert sbom["metadata"]["component"] == {
        "type": "application",
        "bom-ref": "gatehouse",
        "name": "gatehouse",
        "version": "v1-test",
    }
    by_name = {c["name"]: c for c in sbom["components"]}
    assert set(by_name) == {"cryptography", "argon2-cffi", "keyring", "CPython"}
    from importlib.metadata import version

    assert by_name["cryptography"]["version"] == version("cryptography")
    assert by_name["cryptography"]["purl"] == f"pkg:pypi/cryptography@{version('cryptography')}"
    assert by_name["cryptography"]["components"][0]["name"] == "OpenSSL"
    assert "starlette" not in by_name  # installed here, but not in the sources


def test_sbom_lists_unowned_native_libraries_as_hashed_files(tmp_path: Path) -> None:
    lib = tmp_path / "libsomething.so.3"
    lib.write_bytes(b"native")
    sbom = outputs.build_sbom([str(lib)], version="v", timestamp="t", serial="s", distributions=[])
    [component] = sbom["components"]
    assert component["type"] == "file" and component["name"] == "libsomething.so.3"
    assert component["hashes"][0]["alg"] == "SHA-256"


def test_tarball_is_deterministic_and_complete(bundle: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    outputs.write_tarball(bundle, first, mtime=1_700_000_000)
    outputs.write_tarball(bundle, second, mtime=1_700_000_000)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        names = tar.getnames()
        assert "gatehouse/_internal/lib/libthing.so.1" in names
        link = tar.getmember("gatehouse/_internal/libthing.so.1")
        assert link.issym() and link.linkname == "lib/libthing.so.1"
        assert {m.uid for m in tar.getmembers()} == {0}


def test_size_report_groups_by_top_level_component(bundle: Path) -> None:
    total, components, files = outputs.size_report(bundle, top=2)
    assert total == len(b"\x7fELF executable") + 1300 + 3
    assert components[0] == ("lib", 1300)
    assert files[0] == ("lib/libthing.so.1", 1300)
