"""Issue 13 item 1-2: the laptop decides per capability BEFORE it pushes, against a real
third-party FHIR R4 server (Medplum's FHIR router at ``/fhir/R4`` over mutual TLS).

- an advertised transaction size limit is never exceeded (no refused Bundle at all), and a
  limit learned from one refusal is used for the rest of the push;
- a server without conditional create (it ignores ``If-None-Exist``, as such servers do) still
  gets every create exactly once when a reply is lost, even when every retry loses it too;
- a server without If-Match never receives an update blind: the edit is held, visible, and
  the record on the server is untouched.

``running_medplum(max_entries=…, without=…)`` changes what the server says AND what it does
(tests/support/medplum/server.cjs), so the statement the laptop reads stays true.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.core import consultation, records
from client.core.push_refusals import refused_notes
from sync.device.push import HELD_NO_IF_MATCH
from sync.device.transport import Response, Transport, TransportConfig
from tests.support.medplum_server import BASE_PATH, MedplumServer, running_medplum
from tests.support.reply_cutter import ReplyCutter
from tests.support.sync import (
    DEVICE_ID,
    FULL_VITALS,
    SITE,
    DeviceVault,
    device_client_ids,
    device_view,
    now_utc,
    seed_resources,
    sync_once,
    transport_config,
)

Request = tuple[str, str, int]  # method, path or URL, status


def recording(into: list[Request]) -> type[Transport]:
    """The product's transport, noting every request's method, target and status."""

    class Recording(Transport):
        def request(
            self,
            method: str,
            path_or_url: str,
            *,
            body: bytes | None = None,
            headers: Any = None,
            idempotent: bool | None = None,
        ) -> Response:
            response = super().request(
                method, path_or_url, body=body, headers=headers, idempotent=idempotent
            )
            into.append((method.upper(), path_or_url, response.status))
            return response

    return Recording


def _transactions(requests: list[Request], base: str) -> list[int]:
    """The statuses of the transaction Bundles posted (POST to the base)."""
    return [s for m, target, s in requests if m == "POST" and target.rstrip("/") == base]


def _full_consultation(vault: Any, patient_id: str, text: str) -> str:
    """A consultation with every vital sign: 10 entries (Encounter, 8 Observations, note)."""
    with vault.transaction() as conn:
        written = consultation.write_consultation(
            conn,
            patient_id=patient_id,
            author_user_id="nurse.sync",
            site=SITE,
            vitals=FULL_VITALS,
            note_text=text,
            plan_text="Review tomorrow.",
            now=now_utc(),
        )
    assert len(written.outbox_seqs) == 10
    return written.encounter_id


def _site_patient(server: MedplumServer) -> str:
    return sorted(server.site_patients(SITE))[0]


def _laptop(server: MedplumServer, tmp: Path, origin: str | None = None) -> TransportConfig:
    creds = server.pki.device(DEVICE_ID, SITE)
    return transport_config(origin or server.origin, server.pki.server_pin, creds)


def _every_consultation_once(server: MedplumServer, encounters: list[str]) -> None:
    """Each consultation exists once, its observations pointing at the server's Encounter."""
    held = server.search_all("Encounter")
    for client_id in encounters:
        (encounter,) = [
            e for e in held if any(i.get("value") == client_id for i in e.get("identifier", []))
        ]
        observations = [
            o
            for o in server.search_all("Observation")
            if o.get("encounter", {}).get("reference") == f"Encounter/{encounter['id']}"
        ]
        assert len(observations) == 8
    assert all(n == 1 for n in server.client_ids().values())


def test_NW6_an_advertised_transaction_limit_is_kept_so_nothing_is_refused(
    tmp_path: Path,
) -> None:
    """The server advertises its limit (8 entries): two 10-entry consultations go up in
    Bundles of at most 8 without a single refusal (before, the first Bundle of 20 was refused
    and each consultation was refused once more before being halved)."""
    with running_medplum(tmp_path / "medplum", max_entries=8) as server:
        server.seed(seed_resources(4, seed=21))
        config = _laptop(server, tmp_path)
        device = DeviceVault.create(tmp_path / "vault.db")
        with device.open() as vault:
            assert sync_once(vault, config, fhir_base=server.base).ok
            pid = _site_patient(server)
            made = [_full_consultation(vault, pid, f"Visit {n}.") for n in range(2)]
            traffic: list[Request] = []
            result = sync_once(
                vault, config, fhir_base=server.base, transport_class=recording(traffic)
            )
        assert result.ok, (result.failed_phases, result.push_errors)
        assert result.server is not None and result.server["max_transaction_entries"] == 8
        assert result.pushed == 20 and result.push_errors == 0
        statuses = _transactions(traffic, server.base)
        assert statuses and set(statuses) == {200}, statuses  # nothing was ever refused
        assert len(statuses) == 4  # each consultation as 8 + 2, never mixed mid-consultation
        _every_consultation_once(server, made)


def test_NW6_a_limit_learned_from_one_refusal_is_kept_for_the_rest_of_the_push(
    tmp_path: Path,
) -> None:
    """A server that does not advertise its limit refuses once; once a smaller Bundle went
    through, no later Bundle of the push is refused (before, every 10-entry consultation was
    refused before being split)."""
    with running_medplum(tmp_path / "medplum") as server:
        server.seed(seed_resources(4, seed=22))
        config = _laptop(server, tmp_path)
        device = DeviceVault.create(tmp_path / "vault.db")
        with device.open() as vault:
            assert sync_once(vault, config, fhir_base=server.base).ok
            pid = _site_patient(server)
            made = [_full_consultation(vault, pid, f"Visit {n}.") for n in range(3)]
            traffic: list[Request] = []
            result = sync_once(
                vault, config, fhir_base=server.base, transport_class=recording(traffic)
            )
        assert result.ok and result.pushed == 30 and result.push_errors == 0
        statuses = _transactions(traffic, server.base)
        first_accepted = statuses.index(200)
        assert 400 in statuses[:first_accepted]  # it did have to learn
        assert set(statuses[first_accepted:]) == {200}, statuses
        _every_consultation_once(server, made)


@pytest.mark.parametrize(
    "without",
    [(), ("conditional-create",)],
    ids=["with-conditional-create", "without-conditional-create"],
)
@pytest.mark.parametrize("every_retry_cut", [False, True], ids=["one-cut", "every-retry-cut"])
def test_CR2_a_lost_reply_creates_nothing_twice_whatever_the_server_offers(
    tmp_path: Path, without: tuple[str, ...], every_retry_cut: bool
) -> None:
    """The relay lets the server commit the consultation and cuts the reply (and, in the second
    variant, every retry's too, so the sync fails and the laptop still believes it unsent).
    Whether the server honours If-None-Exist or ignores it, the consultation ends on the server
    once and on the laptop once. Without conditional create the laptop finds its own creates by
    client identifier before sending (before: a second copy of every resource)."""
    with running_medplum(tmp_path / "medplum", without=without) as server:
        server.seed(seed_resources(4, seed=23))
        made: list[str] = []
        state = {"cut": False}

        def committed() -> bool:
            state["cut"] = state["cut"] or server.client_ids()[made[0]] > 0
            return state["cut"]

        cutter = ReplyCutter(server.port, committed)
        origin = f"https://127.0.0.1:{cutter.port}"
        relayed = _laptop(server, tmp_path, origin)
        base = origin + BASE_PATH
        retry: Callable[[float], None] = (
            (lambda _s: setattr(cutter, "armed", True)) if every_retry_cut else (lambda _s: None)
        )
        device = DeviceVault.create(tmp_path / "vault.db")
        try:
            with device.open() as vault:
                first = sync_once(vault, relayed, fhir_base=base)
                assert first.ok
                assert first.server is not None
                assert first.server["types"]["Encounter"]["conditional_create"] is not bool(without)
                with vault.transaction() as conn:
                    written = consultation.write_consultation(
                        conn,
                        patient_id=_site_patient(server),
                        author_user_id="nurse.sync",
                        site=SITE,
                        vitals=FULL_VITALS[:3],
                        note_text="Seen on the wing.",
                        plan_text="",
                        now=now_utc(),
                    )
                made.append(written.encounter_id)
                cutter.armed = True
                lost = sync_once(vault, relayed, fhir_base=base, sleep=retry)
                assert cutter.cut >= (2 if every_retry_cut else 1), "no reply was cut"
                if every_retry_cut:
                    assert not lost.ok  # the laptop never heard: the work is still pending
                    cutter.armed = False
                    again = sync_once(vault, relayed, fhir_base=base)
                    assert again.ok and again.pushed == len(written.outbox_seqs)
                else:
                    assert lost.ok and lost.pushed == len(written.outbox_seqs)
                conn = vault.connection
                assert (
                    conn.execute("SELECT count(*) FROM outbox WHERE state != 'sent'").fetchone()[0]
                    == 0
                )
                assert all(n == 1 for n in device_client_ids(conn).values())
                assert device_view(conn) == server.site_view(SITE)
        finally:
            cutter.close()
        on_server = server.client_ids()
        assert on_server and all(n == 1 for n in on_server.values()), on_server
        assert len(on_server) == len(written.outbox_seqs)


def test_NW6_without_if_match_an_edit_is_held_not_sent_blind(tmp_path: Path) -> None:
    """The server cannot check an update's base version: the laptop never sends it (it could
    overwrite another clinician's edit). The edit stays on the laptop as a visible refusal with
    a sentence, and the server's record is untouched (before: the update went up blind and
    overwrote the other clinician's edit)."""
    with running_medplum(tmp_path / "medplum", without=("if-match",)) as server:
        server.seed(seed_resources(4, seed=24))
        config = _laptop(server, tmp_path)
        device = DeviceVault.create(tmp_path / "vault.db")
        with device.open() as vault:
            first = sync_once(vault, config, fhir_base=server.base)
            assert first.ok and first.server is not None
            assert first.server["types"]["Observation"]["if_match"] is False
            assert "Observation:if-match" in first.server["missing"]
            pid = _site_patient(server)
            observation = next(
                o
                for o in server.search_all("Observation")
                if o["subject"]["reference"] == f"Patient/{pid}"
            )
            held = records.get(vault.connection, "Observation", observation["id"])
            assert held is not None
            with vault.transaction() as conn:
                seq = consultation.queue_update(
                    conn, held | {"note": [{"text": "mine"}]}, now=now_utc()
                )
            theirs = server.read("Observation", observation["id"])
            assert theirs is not None
            theirs.pop("meta")
            server.put(theirs | {"note": [{"text": "theirs"}]})  # another clinician, meanwhile
            result = sync_once(vault, config, fhir_base=server.base)
            assert result.pushed == 0 and result.push_errors == 1
            state, error = vault.connection.execute(
                "SELECT state, last_error FROM outbox WHERE seq = ?", (seq,)
            ).fetchone()
            assert (state, error) == ("pending", HELD_NO_IF_MATCH)
            (refusal,) = refused_notes(vault.connection, SITE)
            assert "cannot check" in refusal.sentence and "held:" not in refusal.sentence
            assert "kept on this laptop" in refusal.todo
        current = server.read("Observation", observation["id"])
        assert current is not None and current["note"] == [{"text": "theirs"}]
