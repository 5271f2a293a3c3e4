"""WCAG 2.2 contrast ratios and a small reader for the client's Qt stylesheet (tests only)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RULE = re.compile(r"([^{}]+)\{([^{}]*)\}")
_PROPERTY = re.compile(
    r"(?<![-\w])(color|background|selection-background-color|selection-color|border[\w-]*)"
    r"\s*:\s*([^;]+);?"
)
_HEX = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass(frozen=True)
class Rule:
    selectors: tuple[str, ...]
    properties: dict[str, str]

    def colour(self, name: str) -> str | None:
        value = self.properties.get(name)
        found = _HEX.search(value) if value else None
        return found.group(0).lower() if found else None


def stylesheet_rules(sheet: str) -> list[Rule]:
    rules = []
    for selectors, body in _RULE.findall(sheet):
        props = {name: value.strip() for name, value in _PROPERTY.findall(body)}
        rules.append(Rule(tuple(s.strip() for s in selectors.split(",")), props))
    return rules


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def luminance(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast_ratio(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)
