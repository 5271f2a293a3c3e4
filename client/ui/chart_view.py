"""The patient chart screen and the patient header shared with the consultation form.

Guarantees:
- Safety first: the banner in NHS CUI form ("FAMILY, Given (Title)"; "Born 19-Nov-1978
  (48y)"; "Gender Female"; "NHS No. 943 476 5919"; prison number; site), which wraps rather
  than clips,
  then alerts and allergies, always above problems, medications, vitals and the timeline, and
  always visible (they sit outside the scrolling area). Alerts and allergies are high contrast
  and carry a text label ("⚠ ALERTS", "⚠ ALLERGIES", "HIGH RISK"), never colour alone.
- Missing is never shown as none (UI-5): when the laptop does not hold the patient's whole
  record (``Chart.completeness``), the boxes say "Not available on this laptop — last complete
  on …" with why and what to do, never "No active alerts recorded" or a count of zero, and the
  banner says when the patient's site is not this laptop's.
- Every string from the record is shown with ``data_label`` (Qt.PlainText, UI-1).
- Timeline: newest first as the core orders it; an entry written on a laptop says where it
  has got to (``client.core.note_filing``: "Saved on this laptop", "At the gateway", "Filed
  in the health record on …", or held with the reason), as a text mark and words, reachable
  with Tab.
- Leaving it, the workspace drops its ``chart``, ``lockdown.scrub_tree`` empties its labels and
  the widget is deleted (UI-3).
"""

from __future__ import annotations

from client.core.chart import Banner, Chart, TimelineEntry, VitalReading
from client.core.completeness import SECTION_NOT_HELD, not_available_lines
from client.core.humanize import format_moment
from client.core.note_filing import SAVED_ON_LAPTOP, NoteFiling
from client.core.session import BREAK_GLASS_REASONS, BreakGlassGrant
from client.ui.qt import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    Qt,
    QVBoxLayout,
    QWidget,
    Signal,
)
from client.ui.widgets import button, data_label, format_date, format_nhs, scrolling

SAFETY_SHARE = 0.28  # of the screen's height: beyond this the alert and allergy boxes scroll
SAFETY_MIN_HEIGHT = 90  # points: at least the heads and first lines always show
MAX_NOTE_CHARS_SHOWN = 4000  # a longer note is cut on screen (the record keeps all of it)
UNSENT_MARK = f"● {SAVED_ON_LAPTOP}"
FILING_MARKS = {  # a text mark before the words: never colour alone
    "laptop": "●",
    "conflict": "●",
    "gateway": "→",
    "filed": "✓",
    "held": "⚠",
}


NBSP = "\u00a0"  # keeps one banner item ("NHS No. 943 476 5919") on one line when it wraps
ITEM_GAP = "    "  # between banner items: where the banner may wrap


def banner_name(chart: Chart) -> str:
    """The patient's name as the NHS CUI banner shows it: "FAMILY, Given (Title)"."""
    return chart.banner.banner_name or chart.banner.name


def banner_text(chart: Chart) -> list[tuple[str, str]]:
    """The banner's items after the name, in NHS CUI order and words: "Born 19-Nov-1978 (48y)",
    "Gender Female", "NHS No. 943 476 5919" (3-3-4); then the prison number and the site, which
    says when the patient is not at this laptop's site (UI-5)."""
    return banner_items(chart.banner, chart.completeness.banner_site(chart.banner.site))


def banner_items(b: Banner, site: str) -> list[tuple[str, str]]:
    """``banner_text`` for a banner alone, with the site as the caller words it."""
    born = format_date(b.birth_date)
    age = f" ({b.age}y)" if b.age is not None else ""
    gender = (b.gender or "").strip()
    return [
        ("Born", f"{born}{age}" if born else "not recorded"),
        ("Gender", gender[:1].upper() + gender[1:] if gender else "not recorded"),
        ("NHS No.", format_nhs(b.nhs_number) or "not recorded"),
        ("Prison No.", b.prison_number or "not recorded"),
        ("Site", site),
    ]


def details_line(items: list[tuple[str, str]]) -> str:
    """The banner items before the site as one wrapping line: each item unbreakable, breaks
    only between items. (The site, which may carry a sentence, has its own label.)"""
    return ITEM_GAP.join(
        f"{caption} {value}".replace(" ", NBSP) for caption, value in items if caption != "Site"
    )


def banner_details(chart: Chart) -> str:
    return details_line(banner_text(chart))


def banner_site(chart: Chart) -> str:
    return dict(banner_text(chart))["Site"]


# UCUM codes as people write them (a record may carry the code instead of a display unit).
UNIT_DISPLAY = {"Cel": "°C", "mm[Hg]": "mmHg", "/min": "/min", "kg/m2": "kg/m²", "%": "%"}


def unit_text(unit: str) -> str:
    return UNIT_DISPLAY.get(unit, unit)


def vital_text(reading: VitalReading) -> str:
    if reading.components:
        values = "/".join(f"{value:g}" for _name, value, _unit in reading.components)
        unit = unit_text(reading.components[0][2])
        return f"{values} {unit}".strip()
    if reading.value is None:
        return ""
    return f"{reading.value:g} {unit_text(reading.unit)}".strip()


class PatientBanner(QFrame):
    """The NHS CUI patient banner alone: name, then born, gender, NHS No., prison No., site
    (also above a sync conflict, so the clinician knows whose record it is). Both lines wrap
    (never clip) in a narrow window or at 150% scaling."""

    def __init__(self, banner: Banner, site: str | None = None) -> None:
        super().__init__()
        self.setProperty("role", "banner")
        self.setObjectName("patient_banner")
        self.setAccessibleName("Patient banner")
        items = banner_items(banner, site or banner.site or "not recorded")
        column = QVBoxLayout(self)
        column.setContentsMargins(12, 6, 12, 6)
        column.setSpacing(2)
        self.name = data_label(banner.banner_name or banner.name, role="banner-name", wrap=True)
        self.name.setAccessibleName("Patient name")
        self.details = data_label(details_line(items), wrap=True)
        self.details.setObjectName("banner_details")
        self.details.setAccessibleName("Patient details")
        self.site = data_label(dict(items)["Site"], wrap=True)
        self.site.setObjectName("banner_site")
        self.site.setAccessibleName("Patient's site")
        column.addWidget(self.name)
        row = QHBoxLayout()
        row.setSpacing(8)
        row.addWidget(self.details, 3)
        row.addWidget(data_label("Site"))
        row.addWidget(self.site, 2)
        column.addLayout(row)


class PatientHeader(QFrame):
    """Banner, break-glass banner (when a grant is live), alerts and allergies."""

    def __init__(self, chart: Chart, grant: BreakGlassGrant | None) -> None:
        super().__init__()
        self.setObjectName("patient_header")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)

        banner = PatientBanner(chart.banner, banner_site(chart))
        self.name, self.details, self.site = banner.name, banner.details, banner.site
        layout.addWidget(banner)

        self.break_glass: QFrame | None = None
        if grant is not None:
            self.break_glass = QFrame()
            self.break_glass.setProperty("role", "breakglass")
            self.break_glass.setObjectName("break_glass_banner")
            self.break_glass.setAccessibleName("Break-glass access banner")
            bg = QHBoxLayout(self.break_glass)
            reason = BREAK_GLASS_REASONS.get(grant.reason_code, grant.reason_code)
            bg.addWidget(
                data_label(
                    f"⚠ BREAK-GLASS ACCESS — {reason}. Ends at {format_moment(grant.expires_at)}. "
                    "This access is recorded and reviewed.",
                    wrap=True,
                )
            )
            layout.addWidget(self.break_glass)

        safety = QHBoxLayout()
        safety.setSpacing(8)
        completeness = chart.completeness
        alerts, a = _safety_box("alert", "alerts_box", "Alerts")
        missing = not_available_lines(completeness, completeness.alerts, "alerts", format_moment)
        a.addWidget(
            data_label(
                _head("ALERTS", len(chart.alerts), bool(missing)), role="alert-head", wrap=True
            )
        )
        _add_missing(a, missing)
        for alert in chart.alerts:
            since = f" — since {format_date(alert.since)}" if alert.since else ""
            category = f"[{alert.category}] " if alert.category else ""
            a.addWidget(data_label(f"{category}{alert.text}{since}", wrap=True))
        if not chart.alerts and not missing:
            a.addWidget(data_label("No active alerts recorded.", wrap=True))
        a.addStretch(1)
        allergies, g = _safety_box("allergy", "allergies_box", "Allergies")
        missing = not_available_lines(
            completeness, completeness.allergies, "allergy records", format_moment
        )
        g.addWidget(
            data_label(
                _head("ALLERGIES", len(chart.allergies), bool(missing)),
                role="alert-head",
                wrap=True,
            )
        )
        _add_missing(g, missing)
        for allergy in chart.allergies:
            risk = "HIGH RISK — " if allergy.criticality == "high" else ""
            reactions = f": {', '.join(allergy.reactions)}" if allergy.reactions else ""
            g.addWidget(data_label(f"{risk}{allergy.substance}{reactions}", wrap=True))
        # Never "none recorded" when the laptop does not hold the whole record (UI-5).
        if not missing and not chart.allergies and chart.no_known_allergies:
            g.addWidget(data_label("No known allergies (recorded).", wrap=True))
        elif not missing and not chart.allergies:
            g.addWidget(
                data_label(
                    "No allergies recorded (not the same as 'no known allergies').", wrap=True
                )
            )
        g.addStretch(1)
        safety.addWidget(alerts, 1)
        safety.addWidget(allergies, 1)
        # Always on screen, never pushing the rest off it: the two boxes take at most
        # SAFETY_SHARE of the screen's height (143 of 512 points at 1366x768 and 150%) and
        # scroll inside; their heads ("⚠ ALERTS (2)", "NOT AVAILABLE ON THIS LAPTOP") come
        # first, so they always show.
        boxes = QWidget()
        boxes.setLayout(safety)
        safety.setContentsMargins(0, 0, 0, 0)
        self.safety_area = scrolling(boxes, "Alerts and allergies")
        screen = self.screen()
        tall = screen.availableGeometry().height() if screen is not None else 768
        self.safety_area.setMaximumHeight(max(SAFETY_MIN_HEIGHT, int(tall * SAFETY_SHARE)))
        self.safety_area.setMinimumHeight(min(SAFETY_MIN_HEIGHT, boxes.sizeHint().height()))
        # As tall as what the boxes hold (up to that share), never taller: the room left over
        # goes to the problems, medications and timeline below.
        self.safety_area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        layout.addWidget(self.safety_area)


def _empty_section(chart: Chart, none: str = "None recorded.") -> QLabel:
    """What an empty section says: ``none`` only when the laptop holds the whole record (UI-5)."""
    if chart.completeness.whole_record_held:
        return data_label(none, role="hint")
    return data_label(SECTION_NOT_HELD, role="missing", wrap=True)


def _section(title: str) -> QLabel:
    label = data_label(title, role="section")
    label.setAccessibleName(title)
    return label


def filing_label(filing: NoteFiling) -> QLabel:
    """Where the note has got to: a text mark and one plain sentence, reachable with Tab (a
    screen reader reads its accessible name)."""
    label = data_label(
        f"{FILING_MARKS[filing.kind]} {filing.words}", role=f"filing-{filing.kind}", wrap=True
    )
    label.setObjectName("note_filing")
    label.setAccessibleName(f"Filing: {filing.words}")
    label.setFocusPolicy(Qt.FocusPolicy.TabFocus)
    return label


def timeline_heading(entry: TimelineEntry) -> str:
    """When · what kind · its title; the title is left out where it only repeats the kind."""
    kind = "Consultation note" if entry.kind == "note" else "Encounter"
    when = format_moment(entry.when) or "date not recorded"
    title = entry.title.strip()
    if not title or title.casefold() == kind.casefold():
        return f"{when} · {kind}"
    return f"{when} · {kind} · {title}"


def _timeline_item(entry: TimelineEntry) -> QFrame:
    frame = QFrame()
    frame.setProperty("role", "unsent" if entry.unsent else "")
    layout = QVBoxLayout(frame)
    layout.setContentsMargins(8, 4, 8, 6)
    layout.setSpacing(2)
    head = QHBoxLayout()
    head.addWidget(data_label(timeline_heading(entry), role="section", wrap=True), 1)
    if entry.unsent and (entry.filing is None or entry.filing.kind != "laptop"):
        mark = data_label(UNSENT_MARK, role="unsent")
        mark.setAccessibleName(SAVED_ON_LAPTOP)
        head.addWidget(mark)
    layout.addLayout(head)
    if entry.filing is not None:
        layout.addWidget(filing_label(entry.filing))
    text = entry.text
    if len(text) > MAX_NOTE_CHARS_SHOWN:
        more = len(text) - MAX_NOTE_CHARS_SHOWN
        text = f"{text[:MAX_NOTE_CHARS_SHOWN]}… ({more} more characters not shown)"
    if text:
        layout.addWidget(data_label(text, wrap=True))
    return frame


class ChartScreen(QWidget):
    """One patient's chart. Emits requests; the clinical workspace acts on them."""

    new_consultation_requested = Signal()
    back_requested = Signal()
    print_requested = Signal()

    def __init__(
        self, chart: Chart, grant: BreakGlassGrant | None, *, can_print: bool = False
    ) -> None:
        super().__init__()
        self.setObjectName("chart_screen")
        self.setAccessibleName("Patient chart")
        self.chart: Chart | None = chart
        self.patient_id = chart.banner.patient_id
        outer = QVBoxLayout(self)
        outer.setContentsMargins(12, 8, 12, 8)
        actions = QHBoxLayout()
        self.back = button("← &Back to search", "Back to search (Escape)")
        self.new_consultation = button("&New consultation", "New consultation (Ctrl+N)")
        self.print_button = button("&Print…", "Print (Ctrl+P)")
        # Shown only when the policy allows printing and a printer exists (lockdown.py).
        self.print_button.setVisible(can_print)
        actions.addWidget(self.back)
        actions.addStretch(1)
        actions.addWidget(self.print_button)
        actions.addWidget(self.new_consultation)
        outer.addLayout(actions)
        self.header = PatientHeader(chart, grant)
        outer.addWidget(self.header)

        body = QWidget()
        grid = QGridLayout(body)
        grid.setContentsMargins(0, 0, 8, 0)
        grid.setHorizontalSpacing(18)
        left = QVBoxLayout()
        held = "" if chart.completeness.whole_record_held else " held on this laptop"
        left.addWidget(_section(f"Active problems ({len(chart.problems)}{held})"))
        for problem in chart.problems:
            onset = f" — since {format_date(problem.onset)}" if problem.onset else ""
            left.addWidget(data_label(f"• {problem.text}{onset}", wrap=True))
        if not chart.problems:
            left.addWidget(_empty_section(chart))
        left.addWidget(_section(f"Current medications ({len(chart.medications)}{held})"))
        for med in chart.medications:
            dose = f" — {med.dosage}" if med.dosage else ""
            left.addWidget(data_label(f"• {med.text}{dose}", wrap=True))
        if not chart.medications:
            left.addWidget(_empty_section(chart))
        left.addWidget(_section("Latest vital signs"))
        vitals = QGridLayout()
        vitals.setHorizontalSpacing(14)
        for row, reading in enumerate(chart.vitals):
            vitals.addWidget(data_label(reading.label, role="hint"), row, 0)
            vitals.addWidget(data_label(vital_text(reading)), row, 1)
            vitals.addWidget(data_label(format_moment(reading.effective), role="hint"), row, 2)
        left.addLayout(vitals)
        if not chart.vitals:
            left.addWidget(_empty_section(chart))
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(_section(f"Timeline — newest first ({len(chart.timeline)}{held})"))
        for entry in chart.timeline:
            right.addWidget(_timeline_item(entry))
        if not chart.timeline:
            right.addWidget(_empty_section(chart, "No encounters or notes yet."))
        right.addStretch(1)
        grid.addLayout(left, 0, 0)
        grid.addLayout(right, 0, 1)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(body)
        self.scroll_area.setAccessibleName("Chart details")
        outer.addWidget(self.scroll_area, 1)

        self.back.clicked.connect(self.back_requested)
        self.new_consultation.clicked.connect(self.new_consultation_requested)
        self.print_button.clicked.connect(self.print_requested)
        self.setTabOrder(self.back, self.print_button)
        self.setTabOrder(self.print_button, self.new_consultation)
        self.setTabOrder(self.new_consultation, self.scroll_area)


def _head(noun: str, held: int, incomplete: bool) -> str:
    """ "⚠ ALERTS (2)"; when the laptop lacks part of the record it never claims a count."""
    if incomplete:
        return f"⚠ {noun}: NOT AVAILABLE ON THIS LAPTOP" + (
            f" ({held} held here, may be out of date)" if held else ""
        )
    if held or noun == "ALERTS":
        return f"⚠ {noun} ({held})"
    return noun


def _add_missing(layout: QVBoxLayout, lines: list[str]) -> None:
    for number, line in enumerate(lines):
        label = data_label(line, wrap=True, role="missing" if number == 0 else None)
        if number == 0:
            label.setObjectName("not_available")
            label.setAccessibleName("Not available on this laptop")
        layout.addWidget(label)


def _safety_box(role: str, object_name: str, accessible_name: str) -> tuple[QFrame, QVBoxLayout]:
    """One of the two boxes shown first on every chart (alerts, allergies)."""
    box = QFrame()
    box.setProperty("role", role)
    box.setObjectName(object_name)
    box.setAccessibleName(accessible_name)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(10, 6, 10, 6)
    layout.setSpacing(2)
    return box, layout
