"""packaging/verify.py --demo-out: the checks CI runs on the frozen client's demo journey."""

from __future__ import annotations

import json
import random
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packaging"))

from verify import DEMO_SCREENS, check_demo, png_problem

BIN = Path(sys.executable).parent
Pixel = Callable[[int, int], bytes]


def _png(path: Path, width: int, height: int, pixel: Pixel) -> Path:
    rows = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def _noisy(seed: int = 1) -> Pixel:
    rng = random.Random(seed)
    return lambda x, y: bytes(rng.randrange(256) for _ in range(3))


def test_a_flat_screenshot_is_blank_and_a_real_one_is_not(tmp_path: Path) -> None:
    assert png_problem(_png(tmp_path / "a.png", 520, 320, _noisy())) is None
    flat = _png(tmp_path / "b.png", 520, 320, lambda x, y: b"\xf0\xf0\xf0")
    assert png_problem(flat) == "blank (one flat colour)"
    assert png_problem(_png(tmp_path / "c.png", 100, 80, _noisy())) == "too small (100x80)"
    (tmp_path / "d.png").write_bytes(b"GIF89a")
    assert png_problem(tmp_path / "d.png") == "not a PNG"
    assert png_problem(tmp_path / "missing.png") == "missing"


def _demo_out(tmp_path: Path, *, frozen: bool, blank: str | None = None) -> Path:
    out = tmp_path / "demo-out"
    (out / "device").mkdir(parents=True)
    (out / "device" / "device.json").write_text("{}")
    (out / "gateway").mkdir()
    (out / "gateway" / "gateway.sqlite3").write_bytes(b"")
    names = [f"{i + 1:02d}-{name}.png" for i, name in enumerate(DEMO_SCREENS)]
    names += [f"{len(names) + i + 1:02d}-extra.png" for i in range(14 - len(names))]
    for name in names:
        if blank and blank in name:
            _png(out / name, 520, 320, lambda x, y: b"\x00\x00\x00")
        else:
            _png(out / name, 520, 320, _noisy(len(name)))
    (out / "audit-export.json").write_text('{"resourceType": "Bundle", "entry": []}')
    summary = {
        "frozen": frozen,
        "audit_verified": True,
        "device_data": str(out / "device"),
        "gateway_data": str(out / "gateway"),
        "sync": {"pulled": 10, "pushed": 4},
        "screens": names,
        "audit_export": str(out / "audit-export.json"),
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.mark.skipif(not (BIN / "gatehouse-audit").exists(), reason="gatehouse-audit not installed")
def test_demo_check_names_every_problem_of_a_bad_run(tmp_path: Path) -> None:
    out = _demo_out(tmp_path, frozen=False, blank="locked")
    problems = check_demo(out, BIN / "gatehouse-audit")
    assert "the journey did not run in the frozen client" in problems
    assert any("locked" in p and "blank" in p for p in problems)
    assert any(p.startswith("gatehouse-audit verify refused") for p in problems)
    assert check_demo(tmp_path / "nowhere", BIN / "gatehouse-audit") == [
        f"no readable summary.json in {tmp_path / 'nowhere'}"
    ]
    (out / "summary.json").write_text(json.dumps({"frozen": True, "audit_verified": True}))
    sparse = check_demo(out, BIN / "gatehouse-audit")
    assert "no provisioned device folder" in sparse and "no locked screen" in sparse
