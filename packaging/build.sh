#!/usr/bin/env bash
# Build the Gatehouse laptop bundle: dist/gatehouse/gatehouse (PyInstaller one-folder), then
# write beside it the SHA-256 manifest, the CycloneDX SBOM, the version, the .tar.gz, and print
# the sizes and the biggest components. Check the result with packaging/verify.py.
#
# Usage: bash packaging/build.sh            (from anywhere; uses .venv/bin/python by default)
#        PYTHON=/path/to/python bash packaging/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
DIST=dist
WORK=build/pyinstaller
NAME=gatehouse

if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
    echo "build.sh: installing PyInstaller into the build environment"
    "$PY" -m pip install --quiet "pyinstaller>=6.10"
fi

start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" packaging/gatehouse.spec
built=$(date +%s)

"$PY" packaging/outputs.py --bundle "$DIST/$NAME" --sources "$WORK/$NAME/bundled-sources.json"
end=$(date +%s)

echo "build time: $((built - start)) s (PyInstaller) + $((end - built)) s (manifest, SBOM, tarball)"
echo "bundle: $DIST/$NAME/$NAME   check it with: $PY packaging/verify.py"
