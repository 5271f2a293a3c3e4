"""Control traffic in the same sync: audit upload, policy, commands, trusted time
(docs/control-plane.md). The protocol decides; the client acts.

Guarantees:
- Audit entries leave the device as an AuditEvent Bundle continuing from the last receipt; the
  device marks them uploaded only after verifying the gateway's signed receipt (Ed25519,
  the receipt key from enrolment) against what it sent.
- A policy from the gateway is handed to the device's own verifier (``policy/``): the gateway
  is not trusted for policy; a refusal is the device's to audit, the last good policy stays.
- Commands are acted on only when their Ed25519 signature (receipt key) covers this device id;
  each is acknowledged with a receipt so it runs once.
- A time anchor is accepted only when the signed answer echoes our fresh nonce (TM-2).
- The steps that open a sync (time, the first audit batch, commands) and the policy offered at
  its end travel in ONE request, ``POST device/exchange`` (issue 15 item 3), whose parts are
  checked exactly as the separate answers were and still fail separately: the time, audit and
  commands phases each read their own part. A gateway without the exchange (404) is served by
  the separate requests, as before. The audit entries the sync itself writes go up at its end
  (``audit_final``), so a sync with nothing new costs this request, the data plane's one
  batch, and that upload.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sync.device.engine import SyncError, SyncResult
from sync.device.transport import Response, Transport
from sync.protocol.audit.receipt import Receipt, ReceiptError, receipt_from_json, verify_receipt
from sync.protocol.fhir.bounded_json import MAX_CONTROL_BYTES, BoundedJsonError, loads_bounded
from sync.protocol.statements import SignatureRefused, command_statement, time_statement, verify

AUDIT_BATCH = 2000  # entries per upload; ~5 MB of AuditEvents


@dataclass(frozen=True)
class Command:
    id: str
    kind: str  # "wipe" | "lock" | "revoke_user"
    user_id: str | None
    issued_at: str


class DeviceControl(Protocol):
    """What the control steps need from the device (the client implements it)."""

    device_id: str

    def audit_batch(self, limit: int) -> tuple[dict[str, Any], int, str] | None:
        """(AuditEvent Bundle, last seq, head hash) of the next unsent entries, or None."""
        ...

    def audit_uploaded(self, receipt: Receipt) -> None: ...

    def offer_policy(self, envelope: bytes) -> str:
        """Verify and install; return "installed", "current" or "refused:<reason>"."""
        ...

    def run_command(self, command: Command) -> dict[str, Any]:
        """Carry out a verified command; return its report (plain JSON, no secrets)."""
        ...

    def anchor_time(self, server_time: dt.datetime) -> None: ...


def _json(data: bytes) -> Any:
    try:
        return loads_bounded(data, max_bytes=MAX_CONTROL_BYTES, max_depth=12)
    except BoundedJsonError as error:
        raise SyncError("bad_response", "the gateway's control answer is not valid") from error


def _post(transport: Transport, path: str, body: Any, *, idempotent: bool = False) -> Any:
    return _answer(transport.post_json(path, body, idempotent=idempotent))


def _answer(response: Response, refused: str = "the gateway refused a control request") -> Any:
    """A control answer's JSON; a non-200 raises ``SyncError`` with the gateway's reason."""
    data = _json(response.body)
    if response.status != 200:
        reason = data.get("error") if isinstance(data, dict) else None
        raise SyncError(
            str(reason) if isinstance(reason, str) else f"http_{response.status}",
            refused,
        )
    return data


@dataclass
class _Exchanged:
    """The answer to ``device/exchange``: its parts, the nonce it carried and the audit batch
    it uploaded (None: nothing was pending)."""

    answer: dict[str, Any]
    nonce: str
    audit: tuple[dict[str, Any], int, str] | None


class ControlSteps:
    """The control steps of one sync, as (name, step) pairs for ``SyncEngine``."""

    def __init__(self, device: DeviceControl, receipt_key: Ed25519PublicKey) -> None:
        self._device = device
        self._key = receipt_key
        self._asked = False
        self._exchanged: _Exchanged | None = None
        self._exchange_error: SyncError | None = None

    def before(self) -> Sequence[tuple[str, Any]]:
        """Run first, so nothing later can starve them: time, the audit backlog, commands
        (a remote wipe or lock must never wait behind a broken page or a poison note)."""
        return (("time", self.time), ("audit", self.audit_backlog), ("commands", self.commands))

    def after(self) -> Sequence[tuple[str, Any]]:
        """Run last: the policy, then the audit entries this sync itself wrote."""
        return (("policy", self.policy), ("audit_final", self.audit))

    def _exchange(self, transport: Transport) -> _Exchanged | None:
        """The one opening request (module docstring), made once per sync; None when the
        gateway has no exchange. Its failure is raised again by every phase that needs it."""
        if not self._asked:
            self._asked = True
            nonce = base64.b64encode(secrets.token_bytes(16)).decode()
            audit = self._device.audit_batch(AUDIT_BATCH)
            body: dict[str, Any] = {"nonce": nonce}
            if audit is not None:
                body["audit"] = audit[0]
            try:
                # Idempotent: time and reads, and an audit upload the gateway deduplicates.
                response = transport.post_json("device/exchange", body, idempotent=True)
                if response.status != 404:
                    data = _answer(response, "the gateway refused the sync's opening request")
                    if not isinstance(data, dict):
                        raise SyncError("bad_response", "the gateway's control answer is invalid")
                    self._exchanged = _Exchanged(data, nonce, audit)
            except SyncError as error:
                self._exchange_error = error
        if self._exchange_error is not None:
            raise self._exchange_error
        return self._exchanged

    def time(self, transport: Transport, result: SyncResult) -> None:
        exchanged = self._exchange(transport)
        if exchanged is not None:
            nonce, data = exchanged.nonce, exchanged.answer.get("time")
        else:
            nonce = base64.b64encode(secrets.token_bytes(16)).decode()
            data = _post(transport, "device/time", {"nonce": nonce})
        if not isinstance(data, dict) or data.get("nonce") != nonce:
            raise SyncError("bad_time", "the gateway's time answer does not match our request")
        when, signature = data.get("time"), data.get("signature")
        if not isinstance(when, str) or not isinstance(signature, str):
            raise SyncError("bad_time", "the gateway's time answer is incomplete")
        try:
            verify(self._key, time_statement(nonce, when, self._device.device_id), signature)
            server_time = dt.datetime.fromisoformat(when)
        except (SignatureRefused, ValueError) as error:
            raise SyncError("bad_time", "the gateway's time is not signed correctly") from error
        self._device.anchor_time(server_time)
        result.control["time"] = when

    def audit_backlog(self, transport: Transport, result: SyncResult) -> None:
        """The entries pending when the sync began: the first batch went with the exchange
        (its receipt is checked here), the rest as separate uploads."""
        exchanged = self._exchange(transport)
        uploaded = 0
        if exchanged is not None and exchanged.audit is not None:
            part = exchanged.answer.get("audit")
            if not isinstance(part, dict):
                raise SyncError("bad_response", "the gateway did not answer the audit upload")
            if part.get("status") != 200:
                reason = part.get("error")
                raise SyncError(
                    reason if isinstance(reason, str) else "bad_response",
                    "the gateway refused the audit upload",
                )
            self._accept_receipt(part.get("receipt"), exchanged.audit)
            uploaded = len(exchanged.audit[0].get("entry", []))
        result.control["audit_uploaded"] = int(result.control.get("audit_uploaded", 0)) + uploaded
        self.audit(transport, result)

    def audit(self, transport: Transport, result: SyncResult) -> None:
        uploaded = 0
        while True:
            batch = self._device.audit_batch(AUDIT_BATCH)
            if batch is None:
                break
            data = _post(transport, "device/audit", batch[0], idempotent=True)
            self._accept_receipt(data, batch)
            uploaded += len(batch[0].get("entry", []))
        result.control["audit_uploaded"] = int(result.control.get("audit_uploaded", 0)) + uploaded

    def _accept_receipt(self, data: Any, batch: tuple[dict[str, Any], int, str]) -> None:
        """Verify the gateway's receipt for ``batch`` and mark its entries uploaded."""
        _bundle, last_seq, head_hash = batch
        try:
            receipt = receipt_from_json(orjson.dumps(data))
            verify_receipt(receipt, self._key)
        except ReceiptError as error:
            raise SyncError("bad_receipt", "the audit receipt does not verify") from error
        if receipt.last_seq != last_seq or receipt.head_hash != head_hash:
            raise SyncError("bad_receipt", "the audit receipt is for other entries")
        if receipt.device_id != self._device.device_id:
            raise SyncError("bad_receipt", "the audit receipt is for another device")
        self._device.audit_uploaded(receipt)

    def policy(self, transport: Transport, result: SyncResult) -> None:
        """Offer the gateway's policy for this device (read with the exchange, else now)."""
        exchanged = self._exchanged
        if exchanged is not None and "policy" in exchanged.answer:
            envelope = exchanged.answer["policy"]
            status = 200
        else:
            response = transport.get("device/policy")
            data = _json(response.body)
            envelope = data.get("policy") if isinstance(data, dict) else None
            status = response.status
        if status != 200 or envelope is None:
            result.control["policy"] = "none"
            return
        if not isinstance(envelope, str):
            raise SyncError("bad_response", "the gateway's policy answer is not valid")
        result.control["policy"] = self._device.offer_policy(envelope.encode())

    def commands(self, transport: Transport, result: SyncResult) -> None:
        exchanged = self._exchange(transport)
        if exchanged is not None:
            listed = exchanged.answer.get("commands")
        else:
            response = transport.get("device/commands")
            data = _json(response.body)
            ok = response.status == 200 and isinstance(data, dict)
            listed = data.get("commands") if ok else None
        if not isinstance(listed, list):
            raise SyncError("bad_response", "the gateway's commands answer is not valid")
        done: list[str] = []
        refused = 0
        for raw in listed:
            try:
                command = self._verified(raw)
            except SyncError:
                refused += 1  # an unverifiable command is skipped; the others still run
                continue
            report = self._device.run_command(command)
            _post(
                transport,
                f"device/commands/{command.id}/receipt",
                {"status": "done", "report": report},
                idempotent=True,
            )
            done.append(command.kind)
            if command.kind == "wipe":
                result.control["commands"] = done
                raise SyncError("wiped", "This laptop was wiped on IT's instruction.")
        result.control["commands"] = done
        if refused:
            result.control["commands_refused"] = refused

    def _verified(self, raw: Any) -> Command:
        if not isinstance(raw, dict):
            raise SyncError("bad_command", "a command from the gateway is malformed")
        fields = {k: raw.get(k) for k in ("id", "kind", "user_id", "issued_at")}
        signature = raw.get("signature")
        if not isinstance(fields["id"], str) or fields["kind"] not in {
            "wipe",
            "lock",
            "revoke_user",
        }:
            raise SyncError("bad_command", "a command from the gateway is malformed")
        try:
            verify(self._key, command_statement(fields, self._device.device_id), signature)
        except SignatureRefused as error:
            raise SyncError("bad_command", "a command is not signed for this device") from error
        user = fields["user_id"]
        return Command(
            str(fields["id"]),
            str(fields["kind"]),
            user if isinstance(user, str) else None,
            str(fields["issued_at"]),
        )
