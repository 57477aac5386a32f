"""The COPY text codec and the streaming pipe: escapes, rows split anywhere, masking only the
masked columns, and a real round trip through PostgreSQL with a tiny queue."""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor

import asyncpg
import pytest

from bot.pg import asyncpg_dsn, quote_ident, with_database
from pipelines.data.copy import (
    ColumnMaskingError,
    CopyFormatError,
    MaskPlan,
    RowMasker,
    decode_field,
    encode_field,
    pipe,
)
from pipelines.data.rules import ColumnRule

TRICKY = ["plain", "", "tab\there", "new\nline", "cr\rlf", "back\\slash", "\\N", "N",
          "bell\b form\f vtab\v", "ünïcødé ✓ 🐘", "trailing\\", " spaces "]


def test_escapes_round_trip() -> None:
    for value in [*TRICKY, None]:
        encoded = encode_field(value)
        assert b"\t" not in encoded and b"\n" not in encoded
        assert decode_field(encoded) == value


def test_decodes_every_escape_postgres_accepts() -> None:
    assert decode_field(b"\\N") is None
    assert decode_field(b"\\\\N") == "\\N"
    assert decode_field(b"\\101\\x42\\x4a\\103") == "ABJC"
    assert decode_field(b"\\303\\274") == "ü"  # octal bytes of a UTF-8 sequence
    assert decode_field(b"\\xzz") == "xzz"  # \x without hex digits is a plain x
    assert decode_field(b"\\q") == "q"  # any other escaped character is itself
    assert decode_field(b"a\\tb\\nc\\rd\\be\\ff\\vg") == "a\tb\nc\rd\be\ff\vg"


def _upper(value: str | None) -> str | None:
    return None if value is None else value.upper()


def _stream() -> bytes:
    rows = [[encode_field(f"id{i}"), encode_field(v), encode_field(v)] for i, v in
            enumerate([*TRICKY, None])]
    return b"".join(b"\t".join(r) + b"\n" for r in rows)


def test_masks_only_the_masked_columns_wherever_chunks_end() -> None:
    data = _stream()
    whole = RowMasker({1: _upper}, columns=["id", "a", "b"]).feed(data)
    lines = whole.split(b"\n")[:-1]
    assert [decode_field(line.split(b"\t")[1]) for line in lines] == [
        _upper(v) for v in [*TRICKY, None]]
    assert [line.split(b"\t")[2] for line in lines] == [
        line.split(b"\t")[2] for line in data.split(b"\n")[:-1]]
    for cut in range(1, len(data)):  # a row (or an escape) split at every possible byte
        masker = RowMasker({1: _upper}, columns=["id", "a", "b"])
        assert masker.feed(data[:cut]) + masker.feed(data[cut:]) == whole
        masker.close()
    for size in range(1, 40):  # many chunks, ending anywhere
        masker = RowMasker({1: _upper}, columns=["id", "a", "b"])
        assert b"".join(masker.feed(data[i:i + size])
                        for i in range(0, len(data), size)) == whole, size
        masker.close()


def test_refuses_streams_that_are_not_copy_text() -> None:
    masker = RowMasker({0: _upper}, columns=["a", "b"])
    with pytest.raises(CopyFormatError):
        masker.feed(b"only-one-field\n")
    unfinished = RowMasker({0: _upper}, columns=["a", "b"])
    unfinished.feed(b"x\ty")
    with pytest.raises(CopyFormatError):
        unfinished.close()


def test_a_failing_masker_names_the_column_not_the_value() -> None:
    def refuse(value: str | None) -> str | None:
        raise ValueError("date_shift expects a date")

    masker = RowMasker({1: refuse}, columns=["id", "birthday"])
    with pytest.raises(ColumnMaskingError, match="column birthday: date_shift") as err:
        masker.feed(b"1\tsecret-value\n")
    assert "secret-value" not in str(err.value)


@pytest.fixture(scope="module")
async def copy_db(pg_admin_url: str, db_prefix: str) -> AsyncIterator[str]:
    name = f"{db_prefix}copy"
    admin = await asyncpg.connect(asyncpg_dsn(pg_admin_url))
    await admin.execute(f"CREATE DATABASE {quote_ident(name)}")
    try:
        yield with_database(pg_admin_url, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await admin.close()


async def test_pipe_streams_between_servers_with_a_tiny_queue(copy_db: str) -> None:
    source = await asyncpg.connect(asyncpg_dsn(copy_db))
    target = await asyncpg.connect(asyncpg_dsn(copy_db))
    try:
        await source.execute(
            "CREATE TABLE src (id int, a text, b text); CREATE TABLE dst (LIKE src);"
            "CREATE TABLE raw (LIKE src)")
        values = [*TRICKY, None] * 500
        await source.copy_records_to_table(
            "src", records=[(i, v, v) for i, v in enumerate(values)])
        stats = await pipe(source, "SELECT id, a, b FROM src", target=target, table="dst",
                           schema="public", columns=("id", "a", "b"),
                           masker=RowMasker({1: _upper}, columns=["id", "a", "b"]),
                           queue_chunks=1)
        assert stats.rows == len(values) and stats.bytes > 0
        got = await target.fetch("SELECT id, a, b FROM dst ORDER BY id")
        assert [(r["a"], r["b"]) for r in got] == [(_upper(v), v) for v in values]
        # No masked column: the bytes pass through as they are.
        same = await pipe(source, "SELECT id, a, b FROM src", target=target, table="raw",
                          schema="public", columns=("id", "a", "b"), queue_chunks=1)
        assert same.rows == len(values)
        assert await target.fetchval(
            "SELECT count(*) FROM raw r JOIN src s ON s.id = r.id "
            "AND s.a IS NOT DISTINCT FROM r.a AND s.b IS NOT DISTINCT FROM r.b") == len(values)
    finally:
        await source.close()
        await target.close()


async def test_a_target_failure_stops_the_source(copy_db: str) -> None:
    source = await asyncpg.connect(asyncpg_dsn(copy_db))
    target = await asyncpg.connect(asyncpg_dsn(copy_db))
    try:
        await target.execute("CREATE TABLE strict_dst (id int CHECK (id < 100))")
        with pytest.raises(asyncpg.CheckViolationError):
            await pipe(source, "SELECT g FROM generate_series(1, 100000) g", target=target,
                       table="strict_dst", schema="public", columns=("id",), queue_chunks=1)
        assert await source.fetchval("SELECT 1") == 1  # both connections still usable
        assert await target.fetchval("SELECT count(*) FROM strict_dst") == 0
    finally:
        await source.close()
        await target.close()


async def test_pipe_masks_in_a_process_pool_and_keeps_row_order(copy_db: str) -> None:
    """Blocks masked in other processes come back in the order the source sent them, and
    equal what the same masker gives in this process."""
    source = await asyncpg.connect(asyncpg_dsn(copy_db))
    target = await asyncpg.connect(asyncpg_dsn(copy_db))
    plan = MaskPlan.of(["id", "email", "note"], {1: ColumnRule("email"), 2: ColumnRule("redact")},
                       key=b"pool-key")
    local = plan.row_masker()
    try:
        # `arrived` numbers the rows in the order the target received them.
        await source.execute("CREATE TABLE psrc (id int, email text, note text);"
                             "CREATE TABLE pdst (LIKE psrc, arrived bigserial)")
        rows = [(i, f"person{i % 997}@corp.example", None if i % 3 else "x\ty")
                for i in range(60_000)]
        await source.copy_records_to_table("psrc", records=rows)
        with ProcessPoolExecutor(max_workers=2,
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            stats = await pipe(source, "SELECT id, email, note FROM psrc ORDER BY id",
                               target=target, table="pdst", schema="public",
                               columns=("id", "email", "note"), masker=plan.row_masker(),
                               pool=pool, queue_chunks=2)
        assert stats.rows == len(rows) and stats.bytes > 0
        got = await target.fetch("SELECT id, email, note FROM pdst ORDER BY arrived")
        assert [r["id"] for r in got] == list(range(len(rows)))  # the order held
        expected = local.feed(b"".join(
            f"{i}\t{e}\t{encode_field(n).decode()}\n".encode() for i, e, n in rows))
        assert [decode_field(f) for line in expected.split(b"\n")[:-1]
                for f in line.split(b"\t")[1:]] == [
            v for r in got for v in (r["email"], r["note"])]
    finally:
        await source.close()
        await target.close()


def test_the_row_masker_hands_searched_fields_to_the_leak_search() -> None:
    """Searched columns reach the finder masked and flattened; a json rule's generated values
    are blanked there, what it leaves is not; what was found is named by column position."""
    meta = ColumnRule("json", {"paths": {"$.name": ColumnRule("full_name")}})
    plan = MaskPlan.of(["id", "email", "meta", "note"], {1: ColumnRule("email"), 2: meta},
                       key=b"search-key", search={2: meta, 3: None})
    seen: list[list[bytes]] = []

    def finder(values: list[bytes]) -> dict[str, set[bytes]]:
        seen.append(values)
        hits = {v for v in values if b"ann@corp.example" in v}
        return {"customers.email": hits} if hits else {}

    masker = plan.row_masker(finder)
    rows = b"".join(f"{i}\tann@corp.example\t{encode_field(m).decode()}\t{n}\n".encode()
                    for i, m, n in [(1, '{"name": "Ann Lee", "to": "ann@corp.example"}', "ok"),
                                    (2, '{"name": "Bo Chan"}', "mail ann@corp.example\\tnow")])
    masked = masker.feed(rows)
    assert b"ann@corp.example" not in masked.split(b"\t")[1]  # the masked column
    assert sorted(seen) == sorted([[b'{"name": "", "to": "ann@corp.example"}',
                                   b'{"name": ""}'], [b"ok", b"mail ann@corp.example now"]])
    assert masker.take_hits() == {
        2: {"customers.email": {b'{"name": "", "to": "ann@corp.example"}'}},
        3: {"customers.email": {b"mail ann@corp.example now"}}}
    assert masker.take_hits() == {}
    # Without a finder nothing is searched.
    assert plan.row_masker().feed(rows) == masked
