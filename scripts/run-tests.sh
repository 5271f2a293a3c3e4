#!/usr/bin/env bash
# `make test`'s pytest half, in two pytest processes at once (CI has two cores; much of the
# suite waits on subprocesses: Medplum, sekmet-fhir, PostgreSQL, killed children):
#   1. the protocol, gateway, policy and packaging tests, then the gateway suite on PostgreSQL;
#   2. the laptop's core and Qt tests and the demo (measured: 891 tests in 10.3 min, then the
#      PostgreSQL suite; 621 tests in 13.6 min).
# Every Qt test stays in one process, in the order `make pytest` runs them. Each half writes
# its own log; both are printed when both are done, and the run fails if either did.
# `make pytest` still runs everything in one process.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-tests.XXXXXX")"
export GATEHOUSE_REQUIRE_POSTGRES=1
PYTEST_ARGS=(${PYTEST_ARGS:-})

started=$(date +%s)
(
    "$PY" -m pytest -m "not frozen_bundle" "${PYTEST_ARGS[@]}" \
        tests/sync tests/gateway tests/policy tests/packaging >"$LOGS/protocol.log" 2>&1
    echo $? >"$LOGS/protocol.rc"
    echo "run-tests: protocol, gateway, policy and packaging tests done after $(($(date +%s) - started)) s"
    GATEHOUSE_TEST_STORE=postgres "$PY" -m pytest -q tests/gateway >"$LOGS/postgres.log" 2>&1
    echo $? >"$LOGS/postgres.rc"
    echo "run-tests: gateway suite on PostgreSQL done after $(($(date +%s) - started)) s"
) &
(
    "$PY" -m pytest -m "not frozen_bundle" "${PYTEST_ARGS[@]}" \
        tests/client tests/ui tests/test_*.py >"$LOGS/laptop.log" 2>&1
    echo $? >"$LOGS/laptop.rc"
    echo "run-tests: laptop and demo tests done after $(($(date +%s) - started)) s"
) &
wait

status=0
for part in protocol laptop postgres; do
    echo "=================== $part tests ($LOGS/$part.log) ==================="
    cat "$LOGS/$part.log"
    rc="$(cat "$LOGS/$part.rc" 2>/dev/null || echo 99)"
    if [[ "$rc" != "0" ]]; then
        echo "run-tests: the $part tests FAILED (exit $rc)"
        status=1
    fi
done
echo "run-tests: all three parts in $(($(date +%s) - started)) s; exit $status"
exit "$status"
