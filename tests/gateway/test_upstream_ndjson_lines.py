"""The NDJSON line splitter behind the Bulk Data import: however the network cuts a file into
chunks, each line comes out whole, numbered as in the file, and a line over the bound comes out
as ``None`` (never kept in memory) while the lines after it are read on."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sync.gateway.upstream.bulk import ndjson_lines

BOUND = 12


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    lines = draw(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"x"))))
    data = b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    edges = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(edges)]


@given(chunked())
def test_lines_come_out_whole_and_numbered_however_the_file_is_cut(
    case: tuple[bytes, list[bytes]],
) -> None:
    data, chunks = case
    expected = [
        (number, None if len(line) > BOUND else line)
        for number, line in enumerate(data.split(b"\n"), start=1)
        if len(line) > BOUND or line.strip()
    ]
    assert list(ndjson_lines(iter(chunks), max_line=BOUND)) == expected
