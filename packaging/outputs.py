"""Build outputs written beside the bundle: manifest, SBOM, version, tarball, size report.

Usage::

    python packaging/outputs.py --bundle dist/gatehouse \\
        --sources build/pyinstaller/gatehouse/bundled-sources.json

Writes, next to ``dist/gatehouse/``:

* ``gatehouse.sha256`` — one line per file of the bundle, ``<sha256>  gatehouse/<path>``,
  sorted by path, so ``cd dist && sha256sum -c gatehouse.sha256`` checks it with coreutils;
  ``packaging/verify.py`` also refuses files that are not listed.
* ``gatehouse.sbom.json`` — CycloneDX 1.5: the Python distributions whose files were bundled
  (from the analysis' source list, mapped through ``importlib.metadata`` RECORDs; no network),
  the Python runtime, and system libraries copied in (as files, with their SHA-256).
* ``gatehouse.version`` — ``git describe --always --dirty`` (``unknown`` outside git).
* ``gatehouse.tar.gz`` — the bundle, deterministic (sorted, fixed owner and mtime).

Invariants:
- The manifest covers every regular file and every symlink of the bundle; a symlink whose
  target leaves the bundle is refused (``BundleError``), so the manifest cannot vouch for a
  file outside it.
- Outputs are written atomically (``policy.atomic.atomic_write``), world-readable (0644):
  they are published build artefacts, not secrets.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the build venv normally has the project installed editable
    sys.path.append(str(ROOT))

from policy.atomic import atomic_write  # noqa: E402

PUBLIC_FILE_MODE = 0o644
MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (\S(?:.*\S)?)")
_CHUNK = 1024 * 1024


class BundleError(Exception):
    """The bundle or its manifest is not acceptable; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- manifest -------------------------------------------------------------------------------


def bundle_files(bundle: Path) -> list[str]:
    """Every file and symlink under ``bundle``, as sorted POSIX paths relative to its parent."""
    bundle = bundle.resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(bundle):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():  # os.walk does not descend into these
                dirnames.remove(name)
                filenames.append(name)
        for name in filenames:
            path = base / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(bundle):
                    raise BundleError("symlink_escapes", path.relative_to(bundle).as_posix())
            found.append(path.relative_to(bundle.parent).as_posix())
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():  # a symlink to a directory: hash its target's relative path
        digest.update(os.readlink(path).encode())
        return digest.hexdigest()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_entries(bundle: Path) -> dict[str, str]:
    """``{relative path: sha256}`` for every file of the bundle."""
    parent = bundle.resolve().parent
    return {rel: _sha256(parent / rel) for rel in bundle_files(bundle)}


def format_manifest(entries: dict[str, str]) -> str:
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(entries.items()))


def parse_manifest(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = MANIFEST_LINE.fullmatch(line)
        if match is None:
            raise BundleError("manifest_malformed", f"line {number}")
        digest, path = match.groups()
        if path in entries or path.startswith("/") or ".." in Path(path).parts:
            raise BundleError("manifest_malformed", f"line {number}")
        entries[path] = digest
    return entries


def compare_manifest(bundle: Path, expected: dict[str, str]) -> list[str]:
    """Problems found, one line each (empty when the bundle matches the manifest exactly)."""
    actual = manifest_entries(bundle)
    problems = [f"missing: {p}" for p in sorted(set(expected) - set(actual))]
    problems += [f"not in manifest: {p}" for p in sorted(set(actual) - set(expected))]
    problems += [
        f"changed: {p}" for p in sorted(set(actual) & set(expected)) if actual[p] != expected[p]
    ]
    return problems


# -- SBOM -----------------------------------------------------------------------------------


def _canonical(path: str | os.PathLike[str]) -> str:
    return os.path.normcase(os.path.realpath(path))


def _distribution_index(
    distributions: Iterable[metadata.Distribution],
) -> dict[str, metadata.Distribution]:
    index: dict[str, metadata.Distribution] = {}
    for dist in distributions:
        for file in dist.files or ():
            index.setdefault(_canonical(str(dist.locate_file(file))), dist)
    return index


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _licenses(dist: metadata.Distribution) -> list[dict[str, Any]]:
    meta: Any = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return [{"expression": expression}]
    text = meta.get("License")
    if text and len(text) <= 80 and "\n" not in text:
        return [{"license": {"name": text}}]
    return []


def _python_component() -> dict[str, Any]:
    version = sys.version.split()[0]
    return {
        "type": "framework",
        "bom-ref": f"cpython@{version}",
        "name": "CPython",
        "version": version,
        "purl": f"pkg:generic/cpython@{version}",
        "licenses": [{"expression": "PSF-2.0"}],
    }


def _embedded_libraries(name: str) -> list[dict[str, Any]]:
    """Native libraries a wheel links statically, named as nested components (best effort)."""
    found: list[tuple[str, str]] = []
    try:
        if name == "sqlcipher3":
            import sqlcipher3

            row = sqlcipher3.connect(":memory:").execute("PRAGMA cipher_version").fetchone()
            found.append(("SQLCipher", str(row[0]).split()[0]))
        elif name == "cryptography":
            from cryptography.hazmat.backends.openssl import backend

            found.append(("OpenSSL", backend.openssl_version_text().split()[1]))
    except (ImportError, AttributeError, IndexError, TypeError):
        return []
    return [
        {"type": "library", "bom-ref": f"{name}/{lib}@{version}", "name": lib, "version": version}
        for lib, version in found
    ]


def classify_sources(
    sources: Sequence[str],
    *,
    distributions: Iterable[metadata.Distribution] | None = None,
    project_root: Path = ROOT,
) -> tuple[dict[str, metadata.Distribution], set[str], list[str]]:
    """Split bundled source paths into distributions, stdlib and other (system) files.

    Returns ``({normalised name: dist}, {stdlib paths}, [other paths])``; files of the project
    itself (under ``project_root``) are neither: they are the SBOM's main component.
    """
    index = _distribution_index(
        distributions if distributions is not None else metadata.distributions()
    )
    stdlib_dirs = tuple(
        _canonical(p)
        for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    )
    root = _canonical(project_root)
    found: dict[str, metadata.Distribution] = {}
    stdlib: set[str] = set()
    other: list[str] = []
    for source in sources:
        path = _canonical(source)
        dist = index.get(path)
        if dist is not None:
            found[_normalise(dist.metadata["Name"])] = dist
        elif path.startswith(root + os.sep):
            continue
        elif path.startswith(stdlib_dirs) and "site-packages" not in path:
            stdlib.add(path)
        else:
            other.append(path)
    return found, stdlib, sorted(set(other))


def build_sbom(
    sources: Sequence[str],
    *,
    version: str,
    timestamp: str,
    serial: str,
    distributions: Iterable[metadata.Distribution] | None = None,
    project_root: Path = ROOT,
) -> dict[str, Any]:
    """A CycloneDX 1.5 document for the bundle built from ``sources``."""
    dists, stdlib, other = classify_sources(
        sources, distributions=distributions, project_root=project_root
    )
    components: list[dict[str, Any]] = []
    for name in sorted(dists):
        dist = dists[name]
        if name == "gatehouse":
            continue
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"pkg:pypi/{name}@{dist.version}",
            "name": name,
            "version": dist.version,
            "purl": f"pkg:pypi/{name}@{dist.version}",
        }
        licenses = _licenses(dist)
        if licenses:
            component["licenses"] = licenses
        embedded = _embedded_libraries(name)
        if embedded:
            component["components"] = embedded
        components.append(component)
    if stdlib:
        components.append(_python_component())
    for path in other:
        components.append(
            {
                "type": "file",
                "bom-ref": f"file:{Path(path).name}",
                "name": Path(path).name,
                "hashes": [{"alg": "SHA-256", "content": _sha256(Path(path))}],
                "properties": [{"name": "gatehouse:source", "value": path}],
            }
        )
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial,
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {
                "components": [
                    {"type": "application", "name": "gatehouse packaging/outputs.py"},
                    {"type": "application", "name": "pyinstaller"},
                ]
            },
            "component": {
                "type": "application",
                "bom-ref": "gatehouse",
                "name": "gatehouse",
                "version": version,
            },
        },
        "components": components,
    }


# -- version, tarball, sizes ----------------------------------------------------------------


def git_version(root: Path = ROOT) -> str:
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 (git from PATH on purpose)
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else int(time.time())


def write_tarball(bundle: Path, target: Path, mtime: int) -> int:
    """A deterministic ``.tar.gz`` of ``bundle``; returns its size in bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=mtime) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            parent = bundle.resolve().parent
            for rel in [bundle.name, *_all_entries(bundle)]:
                info = tar.gettarinfo(str(parent / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = mtime
                if info.isreg():
                    with (parent / rel).open("rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    data = buffer.getvalue()
    atomic_write(target, data, PUBLIC_FILE_MODE)
    return len(data)


def _all_entries(bundle: Path) -> list[str]:
    bundle = bundle.resolve()
    entries = []
    for dirpath, dirnames, filenames in os.walk(bundle):
        for name in dirnames + filenames:
            entries.append((Path(dirpath) / name).relative_to(bundle.parent).as_posix())
    return sorted(entries)


def size_report(
    bundle: Path, top: int = 5
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total bytes, the biggest top-level components and the biggest single files."""
    bundle = bundle.resolve()
    contents = bundle / "_internal" if (bundle / "_internal").is_dir() else bundle
    by_component: dict[str, int] = defaultdict(int)
    by_file: dict[str, int] = {}
    total = 0
    for rel in bundle_files(bundle):
        path = bundle.parent / rel
        if path.is_symlink():
            continue
        size = path.stat().st_size
        total += size
        inner = path.relative_to(contents) if path.is_relative_to(contents) else Path(path.name)
        by_component[inner.parts[0]] += size
        by_file[inner.as_posix()] = size

    def biggest(sizes: dict[str, int]) -> list[tuple[str, int]]:
        return sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    return total, biggest(by_component), biggest(by_file)


def _mb(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="e.g. dist/gatehouse")
    parser.add_argument("--sources", type=Path, required=True, help="bundled-sources.json")
    parser.add_argument("--no-tarball", action="store_true")
    args = parser.parse_args(argv)
    bundle: Path = args.bundle.resolve()
    out = bundle.parent
    name = bundle.name

    version = git_version()
    atomic_write(out / f"{name}.version", f"{version}\n".encode(), PUBLIC_FILE_MODE)

    entries = manifest_entries(bundle)
    atomic_write(out / f"{name}.sha256", format_manifest(entries).encode(), PUBLIC_FILE_MODE)

    sources = json.loads(args.sources.read_text())["sources"]
    manifest_digest = hashlib.sha256(format_manifest(entries).encode()).hexdigest()
    epoch = _source_date_epoch()
    sbom = build_sbom(
        sources,
        version=version,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
        serial=f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'gatehouse:' + manifest_digest)}",
    )
    atomic_write(
        out / f"{name}.sbom.json",
        (json.dumps(sbom, indent=2, sort_keys=True) + "\n").encode(),
        PUBLIC_FILE_MODE,
    )

    total, components, files = size_report(bundle)
    print(f"version: {version}")
    print(f"files: {len(entries)}  unpacked: {_mb(total)}")
    if not args.no_tarball:
        compressed = write_tarball(bundle, out / f"{name}.tar.gz", epoch)
        print(f"compressed ({name}.tar.gz): {_mb(compressed)}")
    print("biggest components:")
    for component, size in components:
        print(f"  {_mb(size):>9}  {component}")
    print("biggest files:")
    for file, size in files:
        print(f"  {_mb(size):>9}  {file}")
    print(f"SBOM components: {len(sbom['components'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
