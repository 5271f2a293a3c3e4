"""A batch Bundle of GETs (issue 15 item 3): several reads in one request, each answered exactly
as the same GET alone, within the device's site, over real mutual TLS."""

from __future__ import annotations

from typing import Any

import requests

from tests.support.gateway import SITE_A, SITE_B, Gateway, observation, patient


def _batch(gateway: Gateway, session: requests.Session, urls: list[str]) -> requests.Response:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": url}} for url in urls],
    }
    return session.post(
        gateway.fhir,
        json=bundle,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )


def _load(gateway: Gateway) -> None:
    gateway.load(patient("pa", SITE_A), observation("oa", "pa", 71.0), observation("oa2", "pa"))
    gateway.load(patient("pb", SITE_B), observation("ob", "pb", 72.0))


def _without_volatile(bundle: dict[str, Any]) -> dict[str, Any]:
    """A Bundle as compared across two requests (the CapabilityStatement's date moves)."""
    return {k: v for k, v in bundle.items() if k != "date"}


def test_issue15_a_batch_of_reads_answers_each_as_the_same_get_alone(gateway: Gateway) -> None:
    _load(gateway)
    urls = [
        "metadata",
        "Patient/_history?_count=50",
        "Observation/_history?_count=1",
        "Observation/oa",
    ]
    answer = _batch(gateway, gateway.a, urls)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["type"] == "batch-response" and len(bundle["entry"]) == len(urls)
    for url, entry in zip(urls, bundle["entry"], strict=True):
        alone = gateway.a.get(f"{gateway.fhir}/{url}", timeout=30)
        assert entry["response"]["status"].startswith("200")
        assert _without_volatile(entry["resource"]) == _without_volatile(alone.json())
    # Links are those of a direct GET: the next page is fetched exactly as usual.
    page = bundle["entry"][2]["resource"]
    follow = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert follow.startswith(gateway.fhir + "/Observation/_history?")
    assert gateway.a.get(follow, timeout=30).status_code == 200
    assert bundle["entry"][3]["response"]["etag"] == 'W/"1"'


def test_issue15_a_batch_of_reads_stays_in_the_devices_site(gateway: Gateway) -> None:
    _load(gateway)
    answer = _batch(gateway, gateway.a, ["Observation/ob", "Patient/_history", "../device/time"])
    assert answer.status_code == 200, answer.text
    other, history, outside = answer.json()["entry"]
    assert other["response"]["status"].startswith("404") and "resource" not in other
    assert other["response"]["outcome"]["resourceType"] == "OperationOutcome"
    ids = {e["resource"]["id"] for e in history["resource"].get("entry", [])}
    assert ids == {"pa"}  # never the other site's patient
    assert outside["response"]["status"].startswith("400")


def test_issue15_a_batch_mixing_reads_and_writes_is_refused(gateway: Gateway) -> None:
    _load(gateway)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/pa"}},
            {
                "request": {"method": "PUT", "url": "Observation/oa"},
                "resource": observation("oa", "pa", 99.0),
            },
        ],
    }
    answer = gateway.a.post(
        gateway.fhir, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=30
    )
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["details"]["text"] == "mixed_batch"
