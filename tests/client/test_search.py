"""Patient search on a real SQLCipher file: the search matrix, FTS5 escaping, scope, index sync."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.core.records import apply_resources, delete_resource
from client.core.search import fold, name_terms, parse_birth_date, search_patients
from tests.support.fhir import SEARCH_PATIENTS, flag, nhs_number, open_db, patient

SCOPE = ["hmp-brixton"]


def _populated(path: Path) -> sqlite3.Connection:
    db = open_db(path)
    db.execute("BEGIN IMMEDIATE")
    apply_resources(db, SEARCH_PATIENTS)
    db.execute("COMMIT")
    return db


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    """Shared by the read-only tests of this module (searching never writes)."""
    db = _populated(tmp_path_factory.mktemp("search") / "vault.db")
    yield db
    db.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A private copy for tests that write."""
    db = _populated(tmp_path / "vault.db")
    yield db
    db.close()


def ids(conn: sqlite3.Connection, query: str, scope: list[str] | None = SCOPE) -> list[str]:
    return [hit.id for hit in search_patients(conn, query, site_scope=scope)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # accents and case
        ("jose", "p-jose"),
        ("José", "p-jose"),
        ("JOSE", "p-jose"),
        ("garcia", "p-jose"),
        ("zoe", "p-zoe"),
        ("Zoë", "p-zoe"),
        ("ZOË", "p-zoe"),
        ("odegard", "p-ode"),
        ("Ødegård", "p-ode"),
        ("ødeg", "p-ode"),
        # apostrophes
        ("obrien", "p-obrien"),
        ("o'brien", "p-obrien"),
        ("O’Brien", "p-obrien"),
        ("O‘Brien", "p-obrien"),
        ("brien", "p-obrien"),
        ("o'b", "p-obrien"),
        # hyphens
        ("smith", "p-smithjones"),
        ("jones", "p-smithjones"),
        ("smith-jones", "p-smithjones"),
        ("Smith-Jo", "p-smithjones"),
        ("smithjones", "p-smithjones"),
        # prefixes and several words, any order
        ("john smi", "p-john"),
        ("smi john", "p-john"),
        ("jo", "p-john"),
        ("paul", "p-john"),
        ("j p smithers", "p-john"),
        ("sean 1979-11-02", "p-obrien"),
    ],
)
def test_name_search_matrix(conn: sqlite3.Connection, query: str, expected: str) -> None:
    assert expected in ids(conn, query)


@pytest.mark.parametrize(
    ("query", "absent"),
    [
        ("john smx", "p-john"),  # every word must match
        ("smith-jonesx", "p-smithjones"),
        ("sean 1980-11-02", "p-obrien"),  # date narrows
        ("jose", "p-zoe"),
    ],
)
def test_name_search_does_not_overmatch(conn: sqlite3.Connection, query: str, absent: str) -> None:
    assert absent not in ids(conn, query)


JOSE_NHS = nhs_number(123456)


@pytest.mark.parametrize(
    "query",
    [
        JOSE_NHS,
        f"{JOSE_NHS[:3]} {JOSE_NHS[3:6]} {JOSE_NHS[6:]}",
        f" {JOSE_NHS[:3]}  {JOSE_NHS[3:6]} ",
        JOSE_NHS[:6],
        JOSE_NHS[:4],
    ],
)
def test_nhs_number_with_and_without_spaces_and_prefix(
    conn: sqlite3.Connection, query: str
) -> None:
    assert "p-jose" in ids(conn, query)


def test_full_nhs_number_finds_exactly_one(conn: sqlite3.Connection) -> None:
    assert ids(conn, JOSE_NHS) == ["p-jose"]


@pytest.mark.parametrize("query", ["99", "9", "99912345678"])
def test_nhs_needs_three_to_ten_digits(conn: sqlite3.Connection, query: str) -> None:
    assert ids(conn, query) == []


def test_three_digit_prefix_finds_the_synthetic_range(conn: sqlite3.Connection) -> None:
    assert len(ids(conn, "999")) == len(SEARCH_PATIENTS)


@pytest.mark.parametrize("query", ["A1234BC", "a1234bc", "a1234", "A12", "a1", "jose a1234bc"])
def test_prison_number_case_insensitive_prefix(conn: sqlite3.Connection, query: str) -> None:
    assert ids(conn, query) == ["p-jose"]


def test_name_and_another_patients_prison_number_find_nobody(conn: sqlite3.Connection) -> None:
    assert ids(conn, "smith a1234bc") == []


@pytest.mark.parametrize(
    "query",
    # ISO; UK day first; the form the app itself shows; a two-digit year
    ["1984-03-07", "07/03/1984", "7/3/1984", "07.03.1984", "7-3-1984", "07-Mar-1984",
     "7-mar-1984", "07/03/84"],
)  # fmt: skip
def test_date_of_birth_formats(conn: sqlite3.Connection, query: str) -> None:
    assert ids(conn, query) == ["p-jose", "p-away"]  # in scope first


@pytest.mark.parametrize("query", ["31/02/1984", "1984-13-01", "00/00/0000"])
def test_impossible_dates_find_nothing(conn: sqlite3.Connection, query: str) -> None:
    assert ids(conn, query) == []


def test_parse_birth_date_is_day_first() -> None:
    assert parse_birth_date("03/07/1984") == "1984-07-03"
    assert parse_birth_date("1984-3-7") == "1984-03-07"


def test_a_two_digit_year_is_never_a_birth_in_the_future() -> None:
    today = date(2026, 12, 5)
    assert parse_birth_date("19/11/78", today) == "1978-11-19"
    assert parse_birth_date("05/12/26", today) == "2026-12-05"  # born today
    assert parse_birth_date("06/12/26", today) == "1926-12-06"  # tomorrow in 2026: 1926
    assert parse_birth_date("29/02/01", today) is None
    assert parse_birth_date("19-Foo-1978", today) is None


INJECTIONS = [
    '"',
    '""',
    "'",
    "*",
    "**",
    "smith*",
    "NEAR(",
    "NEAR(smith jones)",
    "NEAR(smith jones, 2)",
    "AND",
    "OR",
    "NOT",
    "smith AND jones",
    "smith OR zzz",
    "smith NOT jones",
    "(",
    ")",
    "(smith",
    "terms:smith",
    "{terms}: smith",
    "^smith",
    "-smith",
    "+",
    '"smith" OR "jones"',
    "'; DROP TABLE resources; --",
    "\x00",
    "smith\x00jones",
    "a" * 10_000,
    "\u202e\u200b",
    "🙂",
    ":",
    ".",
    "%",
    "_",
]


@pytest.mark.parametrize("query", INJECTIONS)
def test_fts_syntax_in_user_text_never_errors_or_injects(
    conn: sqlite3.Connection, query: str
) -> None:
    hits = search_patients(conn, query, site_scope=SCOPE)
    assert isinstance(hits, list)
    # Operators are words, not syntax: "smith OR zzz" must not widen to every smith.
    if query == "smith OR zzz":
        assert hits == []
    assert conn.execute("SELECT count(*) FROM resources").fetchone()[0] == len(SEARCH_PATIENTS)


def test_wildcards_in_sql_like_sense_do_not_match_everything(conn: sqlite3.Connection) -> None:
    assert ids(conn, "%") == []
    assert ids(conn, "_") == []


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_a_safe_query(conn: sqlite3.Connection, query: str) -> None:
    assert isinstance(search_patients(conn, query, site_scope=SCOPE), list)


def test_scope_flag_and_in_scope_first(conn: sqlite3.Connection) -> None:
    hits = search_patients(conn, "1984-03-07", site_scope=SCOPE)
    assert [(h.id, h.in_scope, h.site) for h in hits] == [
        ("p-jose", True, "hmp-brixton"),
        ("p-away", False, "hmp-pentonville"),
    ]
    both = search_patients(conn, "1984-03-07", site_scope=["hmp-brixton", "hmp-pentonville"])
    assert all(h.in_scope for h in both)


def test_no_scope_known_means_nothing_is_in_scope(conn: sqlite3.Connection) -> None:
    hits = search_patients(conn, "999", site_scope=None)
    assert hits and not any(h.in_scope for h in hits)


def test_summary_fields_and_limit(conn: sqlite3.Connection) -> None:
    (hit,) = search_patients(conn, "jose", site_scope=SCOPE)
    assert hit.display_name == "García, José"
    assert (hit.birth_date, hit.nhs_number, hit.prison_number) == (
        "1984-03-07",
        JOSE_NHS,
        "A1234BC",
    )
    assert len(search_patients(conn, "999", site_scope=SCOPE, limit=3)) == 3
    assert search_patients(conn, "999", site_scope=SCOPE, limit=0) == []


def test_has_alerts_follows_active_flags(fresh: sqlite3.Connection) -> None:
    assert not search_patients(fresh, "jose", site_scope=SCOPE)[0].has_alerts
    fresh.execute("BEGIN IMMEDIATE")
    apply_resources(fresh, [flag("f1", "p-jose", "Violent to staff", status="inactive")])
    fresh.execute("COMMIT")
    assert not search_patients(fresh, "jose", site_scope=SCOPE)[0].has_alerts
    fresh.execute("BEGIN IMMEDIATE")
    apply_resources(fresh, [flag("f1", "p-jose", "Violent to staff", version="2")])
    fresh.execute("COMMIT")
    assert search_patients(fresh, "jose", site_scope=SCOPE)[0].has_alerts


def test_UI1_html_in_names_is_stored_and_returned_literally(conn: sqlite3.Connection) -> None:
    (hit,) = search_patients(conn, "bold", site_scope=SCOPE)
    assert hit.display_name == "<b>Bold</b>, <script>alert(1)</script>"
    assert "p-html" in ids(conn, "script alert")


def test_index_follows_updates_and_deletes(fresh: sqlite3.Connection) -> None:
    renamed = patient("p-jose", "Garcia-Lopez", ["Josefina"], version="2", prison="A1234BC")
    older = patient("p-jose", "Stale", ["Old"], version="1")
    fresh.execute("BEGIN IMMEDIATE")
    apply_resources(fresh, [renamed, older])
    fresh.execute("COMMIT")
    assert "p-jose" in ids(fresh, "lopez")
    assert ids(fresh, "stale") == []  # an older version never reaches the index
    assert ids(fresh, JOSE_NHS) == []  # the new version has no NHS number
    fresh.execute("BEGIN IMMEDIATE")
    assert delete_resource(fresh, "Patient", "p-jose")
    fresh.execute("COMMIT")
    assert ids(fresh, "lopez") == [] and ids(fresh, "a1234bc") == []
    assert (
        fresh.execute("SELECT count(*) FROM patient_index").fetchone()[0]
        == len(SEARCH_PATIENTS) - 1
    )
    assert (
        fresh.execute("SELECT count(*) FROM patient_fts").fetchone()[0] == len(SEARCH_PATIENTS) - 1
    )


def test_rollback_leaves_the_index_untouched(fresh: sqlite3.Connection) -> None:
    fresh.execute("BEGIN IMMEDIATE")
    apply_resources(fresh, [patient("p-new", "Newcomer", ["Nia"], nhs=nhs_number(900001))])
    assert ids(fresh, "newcomer") == ["p-new"]
    fresh.execute("ROLLBACK")
    assert ids(fresh, "newcomer") == []


def test_fold_and_terms() -> None:
    assert fold("ÆSIR Łódź Straße") == "aesir lodz strasse"
    assert name_terms("D’Arcy-Smith") == ["d", "arcy", "smith", "darcysmith"]


NAME_LETTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") + list(
    "éèêëáàâäãåçñóòôöõøúùûüýÿíìîïæœßðþłđÉÈÁÀÇÑÓÖØÚÜÍÆŒŁ"
)
NAME_PIECES = st.text(alphabet=NAME_LETTERS, min_size=1, max_size=8)
SEPARATORS = st.sampled_from(["'", "’", "-", " "])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(NAME_PIECES, SEPARATORS), min_size=1, max_size=3), NAME_PIECES)
def test_a_name_is_found_by_itself_and_by_each_piece(
    conn: sqlite3.Connection, parts: list[tuple[str, str]], last: str
) -> None:
    family = "".join(piece + sep for piece, sep in parts) + last
    conn.execute("BEGIN IMMEDIATE")
    try:
        apply_resources(conn, [patient("p-prop", family, ["Given"], nhs=nhs_number(999_999))])
        assert "p-prop" in ids(conn, family)
        assert "p-prop" in ids(conn, family.upper())
        for piece in [p for p, _ in parts] + [last]:
            assert "p-prop" in ids(conn, piece), piece
    finally:
        conn.execute("ROLLBACK")
