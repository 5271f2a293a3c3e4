#!/usr/bin/env bash
# `make demo`: run scripts/demo.py inside its own D-Bus session with an unlocked gnome-keyring,
# so the laptop's device secrets go to a real Secret Service (never a file), isolated from the
# user's own keyring: HOME, XDG_DATA_HOME and XDG_RUNTIME_DIR point into the demo folder.
#
#   bash scripts/demo.sh            opens the client when a display is available
#   HEADLESS=1 bash scripts/demo.sh runs the journey headless: screenshots + summary.json
#   DEMO_OUT=/some/dir              where everything goes (default: demo-out/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${DEMO_OUT:-$ROOT/demo-out}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

if [[ ! -x "$PY" ]]; then
    echo "demo: $PY not found; run 'make venv' first" >&2
    exit 2
fi
for tool in dbus-run-session gnome-keyring-daemon; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "demo: $tool is missing; run 'make sysdeps' (as root) first" >&2
        exit 2
    fi
done

if [[ -e "$OUT" && -n "$(ls -A "$OUT" 2>/dev/null)" && ! -e "$OUT/.gatehouse-demo" ]]; then
    echo "demo: $OUT exists and is not a demo folder; not touching it" >&2
    exit 2
fi
mkdir -p "$OUT/home/.local/share" "$OUT/run"
chmod 700 "$OUT/home" "$OUT/run"
touch "$OUT/.gatehouse-demo"

if [[ "${HEADLESS:-}" == "1" || ( -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ) ]]; then
    export HEADLESS=1 QT_QPA_PLATFORM=offscreen
elif [[ -n "${WAYLAND_DISPLAY:-}" && "${WAYLAND_DISPLAY}" != /* && -n "${XDG_RUNTIME_DIR:-}" ]]; then
    # the display socket stays reachable although XDG_RUNTIME_DIR moves into the demo folder
    export WAYLAND_DISPLAY="$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY"
fi

export HOME="$OUT/home" XDG_DATA_HOME="$OUT/home/.local/share" XDG_RUNTIME_DIR="$OUT/run"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export DEMO_PY="$PY" DEMO_ROOT="$ROOT" DEMO_OUT_DIR="$OUT"
unset DBUS_SESSION_BUS_ADDRESS

exec dbus-run-session -- bash -c '
set -euo pipefail
printf "gatehouse-demo-keyring" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
exec "$DEMO_PY" "$DEMO_ROOT/scripts/demo.py" --out "$DEMO_OUT_DIR"
'
