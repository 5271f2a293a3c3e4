"""The settings schema: one typed, documented table; refusals for anything off it (PO-2)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from policy import docs
from policy.errors import PolicyReason, PolicyRefused
from policy.schema import SETTINGS, SettingKind, defaults, validate_settings
from tests.support.policy import network_settings

REQUIRED_NAMES = {
    "session.idle_lock_seconds", "session.lock_on_focus_loss", "session.break_glass_reauth",
    "session.break_glass_minutes", "auth.min_password_length", "auth.lockout_after_failures",
    "auth.lockout_seconds", "auth.wipe_after_failures", "auth.throttle_base_seconds",
    "offline.warn_after_hours", "offline.block_after_hours", "offline.wipe_after_days",
    "data.site_scope", "data.resource_types", "data.retention_days",
    "device.require_disk_encryption", "device.min_os_version", "network.gateway_url",
    "network.allowed_hosts", "network.spki_pins", "network.tls13_only", "ui.clipboard_copy_out",
    "ui.printing", "ui.screen_capture_exclusion", "ui.kiosk_fullscreen", "ui.watermark",
    "ui.blur_on_lock", "keyring.allow_file_fallback", "audit.upload_interval_minutes",
    "audit.max_unsent_events", "time.max_clock_skew_seconds",
}  # fmt: skip


def schema_refusal(mapping: Any) -> str:
    with pytest.raises(PolicyRefused) as info:
        validate_settings(mapping)
    assert info.value.reason is PolicyReason.SCHEMA
    return info.value.detail


def with_network(**changes: Any) -> dict[str, Any]:
    mapping = network_settings()
    mapping.update(changes)
    return mapping


def test_every_design_setting_is_in_the_schema_once() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_NAMES
    for setting in SETTINGS:
        assert re.fullmatch(r"[a-z]+\.[a-z0-9_]+", setting.name), setting.name
        assert setting.meaning.endswith(".")
        if setting.kind is SettingKind.INT:
            assert setting.minimum is not None and setting.maximum is not None
            assert setting.minimum <= setting.default <= setting.maximum  # type: ignore[operator]


def test_defaults_are_valid_and_documented_values() -> None:
    assert validate_settings(defaults()) == defaults()
    assert defaults()["auth.min_password_length"] == 12
    assert defaults()["network.tls13_only"] is True


def test_omitted_optional_settings_take_defaults_required_ones_refuse() -> None:
    validated = validate_settings(network_settings())
    assert validated["session.idle_lock_seconds"] == defaults()["session.idle_lock_seconds"]
    for name in ("network.gateway_url", "network.allowed_hosts", "network.spki_pins"):
        partial = {k: v for k, v in network_settings().items() if k != name}
        assert f"required setting {name}" in schema_refusal(partial)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.kind is SettingKind.INT])
def test_integer_ranges_are_inclusive_and_enforced(setting: Any) -> None:
    assert setting.minimum is not None and setting.maximum is not None
    for value in (setting.minimum, setting.maximum):
        try:
            assert validate_settings(with_network(**{setting.name: value}))[setting.name] == value
        except PolicyRefused as exc:  # only a cross-field rule may object at the edges
            assert "must" in exc.detail
    for value in (setting.minimum - 1, setting.maximum + 1, True, 1.5, "5", None):
        schema_refusal(with_network(**{setting.name: value}))


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.kind is SettingKind.BOOL])
def test_booleans_are_strict(setting: Any) -> None:
    for value in (0, 1, "true", None):
        schema_refusal(with_network(**{setting.name: value}))


@pytest.mark.parametrize("name", ["network.tls13_only", "session.break_glass_reauth"])
def test_security_switches_cannot_be_turned_off(name: str) -> None:
    schema_refusal(with_network(**{name: False}))


def test_unknown_setting_and_non_object_refused() -> None:
    assert "unknown setting" in schema_refusal(with_network(**{"ui.fireworks": True}))
    schema_refusal(with_network(**{"session": {"idle_lock_seconds": 30}}))
    schema_refusal([("ui.printing", True)])
    schema_refusal(None)


@pytest.mark.parametrize(
    "changes",
    [
        {"auth.lockout_after_failures": 10, "auth.wipe_after_failures": 10},
        {"offline.warn_after_hours": 72, "offline.block_after_hours": 72},
        {"offline.block_after_hours": 720, "offline.wipe_after_days": 30},
        {"data.resource_types": ["Flag", "Condition"]},
        {"network.gateway_url": "https://other.example.org"},
        {"network.fhir_base_url": "https://fhir.other.example.org/fhir/R4"},
    ],
)
def test_cross_field_rules(changes: dict[str, Any]) -> None:
    schema_refusal(with_network(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"network.spki_pins": [network_settings()["network.spki_pins"][0]]},  # no backup pin
        {"network.spki_pins": [network_settings()["network.spki_pins"][0]] * 2},  # duplicate
        {"network.spki_pins": ["AAAA", "BBBB"]},
        {"network.spki_pins": ["A" * 43 + "=", "!" * 43 + "="]},
        {"network.allowed_hosts": ["*.example.org"]},
        {"network.allowed_hosts": ["Gateway.Example.Org"]},
        {"network.allowed_hosts": []},
        {"network.gateway_url": "http://gateway.example.org"},
        {"network.gateway_url": "https://gateway.example.org/a\nb"},
        {"network.gateway_url": "https://gateway.example.org/é"},
        {"network.allowed_hosts": ["gateway.example.org", "010.0.0.1"]},
        {"network.allowed_hosts": ["gateway.example.org", "999.0.0.1"]},
        {"network.allowed_hosts": ["gateway.example.org", "2001:DB8::1"]},
        {"network.gateway_url": "https://user@gateway.example.org"},
        {"network.gateway_url": "https://gateway.example.org/?x=1"},
        {"network.gateway_url": "https://gateway.example.org:99999"},
        {"network.fhir_base_url": "http://gateway.example.org/fhir/R4"},
        {"network.fhir_base_url": "https://gateway.example.org/fhir/R4?x=1"},
        {"data.resource_types": ["Patient", "Bundle"]},
        {"data.site_scope": ["HMP Brixton"]},
        {"device.min_os_version": "ten"},
        {"device.min_os_version": "1\u0661"},  # ARABIC-INDIC DIGIT ONE is not a digit here
    ],
)
def test_string_and_list_values_are_checked(changes: dict[str, Any]) -> None:
    schema_refusal(with_network(**changes))


def test_lists_come_back_immutable() -> None:
    validated = validate_settings(network_settings())
    assert isinstance(validated["network.allowed_hosts"], tuple)


def test_docs_policy_md_matches_the_schema() -> None:
    """docs/policy.md must be exactly what `python -m policy.docs` generates."""
    committed = Path(docs.DOC_PATH).read_text(encoding="utf-8")
    assert committed == docs.render(), "run: python -m policy.docs"
    for setting in SETTINGS:
        assert f"`{setting.name}`" in committed
        assert setting.meaning in committed
    for reason in PolicyReason:
        assert f"`{reason.value}`" in committed


def test_docs_check_mode_detects_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "policy.md"
    monkeypatch.setattr(docs, "DOC_PATH", target)
    assert docs.main([]) == 0
    assert docs.main(["--check"]) == 0
    target.write_text(target.read_text().replace("Lock the session", "Lock eventually"))
    assert docs.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_the_policy_offers_exactly_the_resource_types_a_laptop_stores() -> None:
    """policy/ may not import sync/, so it keeps its own list; this keeps the two equal."""
    from policy.schema import RESOURCE_TYPES
    from sync.protocol.fhir.vocabulary import STORED_TYPES

    assert len(set(RESOURCE_TYPES)) == len(RESOURCE_TYPES)
    assert set(RESOURCE_TYPES) == STORED_TYPES
