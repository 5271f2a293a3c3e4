"""Errors reach the user as calm sentences, never as raw exception text."""

from __future__ import annotations

import logging

import pytest

from client.core.errors import EnvironmentFault, UserFacingError, VaultLocked
from client.ui.error_boundary import NOTHING_LOST, explain


def test_user_facing_errors_show_their_own_message() -> None:
    shown = explain(VaultLocked())
    assert shown.reason == "vault_locked"
    assert "Unlock" in shown.message


def test_environment_faults_say_nothing_was_lost() -> None:
    shown = explain(EnvironmentFault("keyring_unavailable", "No secure keyring. Call IT."))
    assert "Call IT" in shown.message and NOTHING_LOST in shown.message


def test_a_full_disk_is_explained() -> None:
    shown = explain(OSError(28, "No space left on device"))
    assert shown.reason == "disk_full"
    assert "No space left" not in shown.message


def test_bugs_never_show_their_text_and_log_only_the_type(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Patient Zoë O'Brien NHS 9990001234"
    with caplog.at_level(logging.ERROR):
        shown = explain(KeyError(secret))
    assert shown.reason == "bug"
    assert secret not in shown.message
    assert secret not in caplog.text
    assert "KeyError" in caplog.text


def test_user_facing_subclasses_keep_their_reason() -> None:
    assert explain(UserFacingError("wrong_password", "That password is not right.")).reason == (
        "wrong_password"
    )
