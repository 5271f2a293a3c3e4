"""Issue 13 "done means", through the product end to end: a laptop provisioned from IT's bundle
by our gateway (control plane: enrolment, sign-in, time, audit, policy), whose signed policy
points its data plane at a third-party FHIR R4 server at ``/fhir/R4`` on another origin
(Medplum's FHIR router over mutual TLS, both origins pinned by the policy).

- a fresh laptop pulls every in-scope resource (its counts equal the server's for its site)
  and stores nothing of another site's patients;
- a 10-entry consultation written offline reaches that server exactly once;
- ``data.reconcile_hours`` from the signed policy decides when deletions are found: at the
  default (24 h) a record deleted on the server stays until the daily check; a policy with 0
  makes the next sync find it.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from pathlib import Path

from client.cli import device_status
from client.core import records
from client.core.device_keyring import InMemoryKeyring
from client.core.provisioning import add_user_online
from client.core.session import Session
from client.core.sync_runner import run_sync
from policy.schema import RESOURCE_TYPES
from sync.gateway import policies, users
from tests.support.device import policy_envelope
from tests.support.gateway import TEST_HASHER, Gateway, running_gateway
from tests.support.laptop import NURSE, SITE, provision_laptop
from tests.support.medplum_server import MedplumServer, running_medplum
from tests.support.sync import FULL_VITALS, device_view, seed_resources

NOW = dt.datetime.now(dt.UTC)
SPARE_PIN = base64.b64encode(b"b" * 32).decode()


def _policy(gw: Gateway, medplum: MedplumServer, version: int, **settings: object) -> bytes:
    """The signed policy: control plane at the gateway, data plane at Medplum's /fhir/R4."""
    return policy_envelope(
        version,
        around=NOW,
        network__gateway_url=gw.server.url + "/",
        network__fhir_base_url=medplum.base,
        network__allowed_hosts=["127.0.0.1"],
        network__spki_pins=[gw.pki.server_pin, medplum.pki.server_pin, SPARE_PIN],
        **settings,
    )


def _held(session: Session) -> dict[tuple[str, str], str]:
    """(type, id) → versionId of every server version the laptop holds."""
    return device_view(session.connection())


def test_issue13_a_laptop_whose_policy_names_a_third_party_data_plane_syncs_end_to_end(
    tmp_path: Path,
) -> None:
    with running_gateway(tmp_path / "gw") as gw:
        assert gw.authority is not None
        with running_medplum(tmp_path / "medplum", client_ca_pem=gw.authority.ca_pem) as medplum:
            medplum.seed(seed_resources(patients=12, seed=31))
            policies.publish(gw.store, _policy(gw, medplum, 1), now=NOW, trust_keys=())
            users.add_user(
                gw.store,
                user_id=NURSE[0],
                role="clinician",
                site=SITE,
                password=NURSE[1],
                now=NOW,
                hasher=TEST_HASHER,
                allow_weak_hasher=True,
            )
            device = provision_laptop(gw, tmp_path / "laptop", InMemoryKeyring())
            assert add_user_online(device, *NURSE) == "clinician"
            session = Session.login(device, *NURSE)

            first = run_sync(session)
            assert first.ok, (first.error, first.failed_phases, first.failed_types)
            expected = medplum.site_view(SITE)
            assert Counter(kind for kind, _ in expected)["Patient"] > 0
            assert _held(session) == expected  # every in-scope resource, nothing else
            everything = sum(len(medplum.search_all(kind)) for kind in RESOURCE_TYPES)
            assert first.pulled == len(expected) < everything
            assert first.out_of_scope > 0  # the other site's records came and were not stored
            status = device_status(device)
            assert status["server"]["software"].startswith("Medplum")
            assert "Patient:history-type" in status["server"]["missing"]

            # A consultation with every vital sign (10 entries) goes up exactly once.
            pid = sorted(medplum.site_patients(SITE))[0]
            written = session.write_consultation(
                pid,
                vitals=FULL_VITALS,
                note_text="Seen on the wing; full observations.",
                plan_text="Review in a week.",
            )
            pushed = run_sync(session)
            assert pushed.ok and pushed.pushed == 10 and pushed.push_errors == 0
            on_server = medplum.client_ids()
            assert len(written.outbox_seqs) == 10
            assert on_server[written.encounter_id] == 1
            assert all(n == 1 for n in on_server.values()) and sum(on_server.values()) == 10
            assert run_sync(session).pushed == 0

            # A deletion on the server: the default policy (24 h) finds it at the daily check.
            victim = next(
                o
                for o in medplum.search_all("Observation")
                if o["subject"]["reference"] == f"Patient/{pid}"
                and not o.get("identifier")  # one the server had, not the laptop's own
            )
            medplum.delete("Observation", victim["id"])
            assert run_sync(session).ok
            assert records.get(session.connection(), "Observation", victim["id"]) is not None
            # IT signs a policy that reconciles at every sync: it arrives with the next sync
            # and the sync after it finds the deletion.
            policies.publish(
                gw.store,
                _policy(gw, medplum, 2, data__reconcile_hours=0),
                now=NOW,
                trust_keys=(),
            )
            assert run_sync(session).control.get("policy") is not None
            assert session.policy.get_int("data.reconcile_hours") == 0
            final = run_sync(session)
            assert final.ok
            assert records.get(session.connection(), "Observation", victim["id"]) is None
            assert _held(session) == medplum.site_view(SITE)
            session.lock()
