"""The data plane's capabilities as last read from its ``metadata`` (issue 13), kept in the
device's data folder for IT (``gatehouse device status --json``) without signing in.

Invariants:
- The file holds capability codes, counts, the server's software name and when it was read:
  no patient data, no secrets, so it lives outside the vault (like the device profile).
- Written atomically after a sync whose server described itself; a sync that could not read
  it leaves the last one in place. Reading never raises: a missing or unreadable file is None.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from policy.atomic import atomic_write

SERVER_PROFILE = "server_profile.json"


def save_server_profile(data_dir: Path, profile: dict[str, Any], read_at: dt.datetime) -> None:
    document = {"read_at": read_at.isoformat(), **profile}
    atomic_write(data_dir / SERVER_PROFILE, json.dumps(document, sort_keys=True).encode())


def load_server_profile(data_dir: Path) -> dict[str, Any] | None:
    try:
        document = json.loads((data_dir / SERVER_PROFILE).read_bytes())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
