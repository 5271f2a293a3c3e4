"""UI tests run on Qt's offscreen platform: no display needed, real widgets."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
