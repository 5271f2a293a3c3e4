"""``gatehouse-gateway upstream set|status|sync`` and ``site link``.

Invariants:
- ``set`` works on an initialised data folder only and prints no secret; ``status`` shows the
  configuration (without secrets), the last pass and, per capability, whether the upstream
  offers it and what the gateway does (``--json``: the same as one JSON document, with reason
  codes), the linked sites, the last import's counts and every quarantined resource (type,
  id, reason code, JSON path: never its content); ``sync`` runs one pass now (with a
  reconciliation) and exits 2 with one line when it fails.
- The quarantine ``status`` lists is the open rows only (a record that since imported cleanly,
  or that a completed reconciliation no longer meets, has left it; ``load``); ``--json`` adds
  the last ``CLOSED_SHOWN`` closed rows with when and why. ``upstream quarantine clear
  (TYPE/ID | --all)`` closes rows IT has dealt with (cause ``cleared_by_it``); a record still
  bad upstream is quarantined again by the next pass that reads it.
- ``site link SITE (--group ID | --organization ID)`` links a known site to one upstream Group
  or Organization (a second link replaces the first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import orjson

from sync.gateway import datadir
from sync.gateway.errors import sentence
from sync.gateway.store.sql import SqlStore
from sync.gateway.store.upstream_tables import LinkKind
from sync.gateway.upstream.config import DEFAULT_POLL_S, UpstreamConfig, load_config, set_upstream
from sync.gateway.upstream.errors import UpstreamError
from sync.gateway.upstream.load import ELEMENTS_STREAM
from sync.gateway.upstream.passes import run_pass
from sync.gateway.upstream.state import load_state
from sync.protocol.fhir.vocabulary import ID_RE

CLOSED_SHOWN = 100  # closed quarantine rows in ``status --json``, the most recent first


def _initialised(args: argparse.Namespace) -> Path:
    data = Path(args.data)
    if not (data / datadir.CA_CERT).exists():
        raise UpstreamError("not_initialised")
    return data


def _describe(config: UpstreamConfig) -> str:
    ways = []
    if config.cert_file is not None:
        ways.append("client certificate")
    if config.token_url is not None:
        ways.append(f"SMART Backend Services token from {config.token_url} as {config.client_id}")
    files = (
        f"; Bulk Data files also from {', '.join(config.bulk_origins)} (without the token)"
        if config.bulk_origins
        else ""
    )
    return f"upstream {config.base} (poll every {config.poll_s} s; {', '.join(ways)}){files}"


def _set(args: argparse.Namespace) -> int:
    config = set_upstream(
        _initialised(args),
        base=args.base,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        token_url=args.token_url,
        client_id=args.client_id,
        jwk_path=args.jwk,
        poll_s=args.poll,
        bulk_origins=tuple(args.bulk_origin or ()),
    )
    print(f"{_describe(config)} configured; secrets copied into the data folder (0600)")
    print("run `gatehouse-gateway upstream sync` to check the connection now")
    return 0


def _open_store(data: Path, args: argparse.Namespace) -> SqlStore:
    from sync.gateway.store.opening import open_store

    store = open_store(data, getattr(args, "database", None))
    if not isinstance(store, SqlStore):  # pragma: no cover - every store is one today
        store.close()
        raise UpstreamError("bad_configuration", "store")
    return store


def status_document(data: Path, store: SqlStore) -> dict[str, Any]:
    config = load_config(data)
    return {
        "configuration": config.to_json(),
        **load_state(data, store),
        "site_links": [
            {"site": link.site, "kind": link.kind, "ref": link.ref} for link in store.site_links()
        ],
        "quarantine": [
            {"type": q.rtype, "id": q.rid, "reason": q.reason, "path": q.path}
            for q in store.upstream_quarantine()
        ],
        "quarantine_closed": [
            {
                "type": q.rtype,
                "id": q.rid,
                "reason": q.reason,
                "cleared": q.cleared_at.isoformat(),
                "cause": q.cause,
            }
            for q in store.closed_quarantine(CLOSED_SHOWN)
        ],
        "reconcile_elements": store.upstream_mark(ELEMENTS_STREAM),
        "outbox": store.outbox_counts(),
        "outbox_not_filed": [
            {
                "seq": item.seq,
                "type": item.rtype,
                "id": item.rid,
                "version": item.version_id,
                "state": item.state,
                "reason": item.reason,
                "detail": item.detail,
                "attempts": item.attempts,
            }
            for item in store.outbox(("held", "conflict", "pending"), 200)
        ],
    }


def _status(args: argparse.Namespace) -> int:
    data = _initialised(args)
    store = _open_store(data, args)
    try:
        document = status_document(data, store)
    finally:
        store.close()
    if args.json:
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print_status(data, document)
    return 0


def print_status(data: Path, document: dict[str, Any]) -> None:
    """``upstream status`` in words, from its JSON document."""
    print(_describe(load_config(data)))
    if "last_attempt" not in document:
        print("no pass has run yet: run `gatehouse-gateway upstream sync`")
        return
    if document.get("last_outcome") == "ok":
        print(f"last pass {document['last_attempt']}: ok")
    else:
        reason = str(document.get("last_reason"))
        print(f"last pass {document['last_attempt']}: FAILED: {sentence(reason)} ({reason})")
        print(f"last successful pass: {document.get('last_success') or 'never'}")
    for where, version in sorted((document.get("tls") or {}).items()):
        print(f"TLS with {where}: {version}")
    for link in document["site_links"]:
        print(f"site {link['site']}: upstream {link['kind']} {link['ref']}")
    if document.get("counts"):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(document["counts"].items()))
        print(f"last import: {counts}")
    quarantine = document["quarantine"]
    if quarantine:
        print(f"{len(quarantine)} upstream resource(s) quarantined (not imported):")
        for q in quarantine:
            print(f"  {q['type']}/{q['id']}: {q['reason']} at {q['path']}")
    closed = document["quarantine_closed"]
    if closed:
        print(
            f"{len(closed)} quarantine row(s) closed lately (the last at {closed[0]['cleared']};"
            " --json lists them with their cause)"
        )
    if document.get("reconcile_elements") == "ignored":
        print(
            "reconciliation by id lists: the upstream ignores _elements, so its id lists cost"
            " as much as whole records (still correct; a changed record is downloaded twice)"
        )
    elif document.get("reconcile_elements") == "honoured":
        print("reconciliation by id lists: the upstream honours _elements=id,meta")
    outbox = document["outbox"]
    print(
        "notes out: "
        + (", ".join(f"{n} {state}" for state, n in sorted(outbox.items())) or "none yet")
    )
    for item in document["outbox_not_filed"]:
        if item["state"] == "pending" and not item["reason"]:
            continue
        words = item["detail"] or sentence(str(item["reason"]))
        print(
            f"  {item['state'].upper():8} #{item['seq']} {item['type']}/{item['id']}"
            f" v{item['version']}: {item['reason']}: {words}"
        )
    capabilities = document.get("capabilities")
    if capabilities:
        print(
            f"capabilities of {capabilities.get('software') or 'the upstream'} "
            f"(FHIR {capabilities.get('fhir_version') or '?'}):"
        )
        for decision in capabilities.get("decisions", []):
            mark = "offered" if decision["offered"] else "MISSING"
            print(f"  {mark:8} {decision['capability']:34} {decision['plan']}")


def _sync(args: argparse.Namespace) -> int:
    data = _initialised(args)
    store = _open_store(data, args)
    try:
        result = run_pass(data, store, reconcile=True)
    finally:
        store.close()
    missing = result.capabilities.missing() if result.capabilities else []
    tls = ", ".join(sorted(set(result.tls.values()))) or "?"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "nothing linked"
    print(f"upstream pass done over {tls}; {len(missing)} capability(ies) missing; {counts}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    data = _initialised(args)
    store = _open_store(data, args)
    try:
        released = store.outbox_release(None if args.all else args.seq)
    finally:
        store.close()
    print(f"{released} held note(s) will be filed again at the next pass")
    if released == 0 and not args.all:
        print(
            "a note in conflict is not retried here: the clinician who wrote it resolves it on"
            " the laptop's conflict screen"
        )
    return 0


def _quarantine_clear(args: argparse.Namespace) -> int:
    data = _initialised(args)
    if args.all:
        rtype, rid = None, ""
    else:
        rtype, _, rid = str(args.resource).partition("/")
        if not rtype or not rid:
            raise UpstreamError("bad_quarantine_row")
    store = _open_store(data, args)
    try:
        cleared = store.clear_quarantine(dt.datetime.now(dt.UTC), rtype, rid)
    finally:
        store.close()
    print(f"{cleared} quarantine row(s) cleared (kept in the log as cleared_by_it)")
    if cleared == 0 and rtype is not None:
        print("no open quarantine row has that TYPE/ID: see `gatehouse-gateway upstream status`")
    return 0


def site_link(args: argparse.Namespace, store: Any) -> int:
    """``site link SITE (--group ID | --organization ID)`` (registered by ``admin_cli``)."""
    if not isinstance(store, SqlStore):  # pragma: no cover - every store is one today
        raise UpstreamError("bad_configuration", "store")
    kind: LinkKind = "group" if args.group else "organization"
    ref = str(args.group or args.organization)
    if not ID_RE.fullmatch(ref):
        raise UpstreamError("bad_upstream_id")
    store.link_site(args.site, kind, ref, dt.datetime.now(dt.UTC))
    print(f"site {args.site} linked to upstream {kind} {ref}; its patients arrive at the next pass")
    return 0


def register(commands: Any) -> None:
    upstream = commands.add_parser(
        "upstream", help="the health board's FHIR server (system of record)"
    ).add_subparsers(dest="upstream_command", required=True)
    setting = upstream.add_parser("set", help="where the upstream is and how to reach it")
    setting.add_argument("--data", required=True)
    setting.add_argument("--base", required=True, help="FHIR base URL, https://host/any/path")
    setting.add_argument("--ca", default=None, help="the CA to trust (required; nothing else is)")
    setting.add_argument("--cert", default=None, help="client certificate (PEM)")
    setting.add_argument("--key", default=None, help="its private key (PEM, unencrypted)")
    setting.add_argument("--token-url", default=None, help="SMART Backend Services token URL")
    setting.add_argument("--client-id", default=None)
    setting.add_argument("--jwk", default=None, help="private signing key (JWK, RS384/ES384)")
    setting.add_argument("--poll", type=int, default=DEFAULT_POLL_S, help="seconds")
    setting.add_argument(
        "--bulk-origin",
        action="append",
        default=None,
        help="https://host[:port] the upstream's Bulk Data files may come from (repeatable)",
    )
    setting.set_defaults(run=_set)
    status = upstream.add_parser("status", help="configuration, last pass, capabilities")
    status.add_argument("--data", required=True)
    status.add_argument("--json", action="store_true")
    status.add_argument("--database", default=None, help="postgresql://… URL")
    status.set_defaults(run=_status)
    once = upstream.add_parser("sync", help="one pass now")
    once.add_argument("--data", required=True)
    once.add_argument("--database", default=None, help="postgresql://… URL")
    once.set_defaults(run=_sync)
    retry = upstream.add_parser("retry", help="file held notes again, once IT has acted")
    retry.add_argument("--data", required=True)
    retry.add_argument("--database", default=None, help="postgresql://… URL")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int, default=None, help="one outbox row (see status)")
    which.add_argument("--all", action="store_true", help="every held row")
    retry.set_defaults(run=_retry)
    quarantine = upstream.add_parser(
        "quarantine", help="upstream records the import set aside"
    ).add_subparsers(dest="quarantine_command", required=True)
    clear = quarantine.add_parser(
        "clear", help="close quarantine rows IT has dealt with (a later import reopens them)"
    )
    clear.add_argument("--data", required=True)
    clear.add_argument("--database", default=None, help="postgresql://… URL")
    one = clear.add_mutually_exclusive_group(required=True)
    one.add_argument("resource", nargs="?", default=None, help="TYPE/ID, as status lists it")
    one.add_argument("--all", action="store_true", help="every open row")
    clear.set_defaults(run=_quarantine_clear)
