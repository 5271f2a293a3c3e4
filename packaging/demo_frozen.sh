#!/usr/bin/env bash
# CI, after `make package`: the headless demo journey with the FROZEN laptop client.
#
# scripts/demo.sh starts a real gateway (Python, in the build venv) inside its own D-Bus
# session with gnome-keyring, then runs the client half of the journey with
# dist/gatehouse/gatehouse --demo-journey (the bundle holds no gateway code; the patient
# transfer mid-way is a hook back into scripts/demo.py). packaging/verify.py --demo-out then
# checks summary.json, every screenshot (present, not blank) and `gatehouse-audit verify` of
# the exported audit chain. Exit non-zero on any failure.
#
# Usage: bash packaging/demo_frozen.sh
#        CLIENT=dist/gatehouse/gatehouse DEMO_OUT=build/demo-frozen PYTHON=.venv/bin/python
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CLIENT="${CLIENT:-$ROOT/dist/gatehouse/gatehouse}"
OUT="${DEMO_OUT:-$ROOT/build/demo-frozen}"

if [[ ! -x "$CLIENT" ]]; then
    echo "demo_frozen: $CLIENT is not built; run 'make package' first" >&2
    exit 2
fi
CLIENT="$(cd "$(dirname "$CLIENT")" && pwd)/$(basename "$CLIENT")"

start=$(date +%s)
DEMO_CLIENT="$CLIENT" HEADLESS=1 DEMO_OUT="$OUT" PYTHON="$PY" bash "$ROOT/scripts/demo.sh"
"$PY" "$ROOT/packaging/verify.py" --demo-out "$OUT"
echo "frozen demo journey: $(( $(date +%s) - start )) s in total (see $OUT/summary.json)"
