"""Streaming COPY between two PostgreSQL connections, with masking applied on the way.

Why: a snapshot copies every kept row of the source into the golden database, and the sensitive
columns must be transformed before they reach it. COPY is the fastest way in and out of
PostgreSQL, and its text format is simple enough to rewrite on the fly: rows end in a newline,
fields are separated by tabs, NULL is `\\N`, and tabs, newlines and backslashes inside a value
are escaped — so splitting a chunk on `b"\\n"` and a row on `b"\\t"` is always right, and only the
masked fields need to be unescaped, transformed and escaped again. A table with nothing to mask
or search is passed through byte for byte.

Memory stays flat whatever the size: the source's COPY OUT feeds a bounded `asyncio.Queue` that
the target's COPY IN drains; when the target is slow, the queue fills, the source callback
waits, asyncpg stops reading the socket and the source server waits too.

Masking is CPU-bound, and one process has one core. The row loop is compiled where a C compiler
was at install (`_rowmask.c`: splitting, cache lookups, jsonb documents, the leak search's
lookups), calling Python only for what it has not met; `RowMasker._rows` is the same loop in
Python, the reference it is tested against and the fallback. A full copy gives each table (or
range of its pages) to a pool process as a `CopyJob`: the process reads the source in the
build's exported snapshot, masks and writes the target on connections of its own. Otherwise,
given an executor, `pipe` cuts the stream into blocks of whole rows and masks them in the
pool's processes while it keeps reading and writing; the blocks' results are queued in order,
so the target still receives the rows as the source sent them. Each pool process rebuilds the
row masker from a picklable `MaskPlan` once, and keeps it (and its caches) for the rest of
the build.

The leak check's search (`pipelines.data.leaks`) runs here too, so the golden database is never
read back: given a finder, the row masker hands it the masked fields of the searched columns
block by block, and collects what it found (`RowMasker.hits`). A table without masked columns
but with searched ones then goes through the row masker as well.

Neighbours: `pipelines.data.masking` makes the per-column maskers (functions on PostgreSQL text
representations); `pipelines.data.snapshot` and `pipelines.data.subset` call `pipe`.
"""

from __future__ import annotations

import asyncio
import gc
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.data.rules import ColumnRule

try:  # the compiled row loop, built at install (`_rowmask.c`); the Python loop otherwise
    from pipelines.data import _rowmask
except ImportError:  # pragma: no cover - a build without a C compiler
    _rowmask = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from pipelines.data.masking import SharedMaskers, _JsonMasker

COMPILED = _rowmask is not None  # whether rows are masked by the compiled loop (doctor says)

Masker = Callable[[str | None], str | None]
# The leak search (`leaks.find` bound to the build's sampled values): searched fields of many
# rows → source column → the sampled values found among them.
Finder = Callable[[list[bytes]], dict[str, set[bytes]]]
Hits = dict[int, dict[str, set[bytes]]]  # column position → source column → values found

NULL = b"\\N"
QUEUE_CHUNKS = 16  # chunks in flight between source and target (each a few dozen kB)
FIELD_CACHE = 65_536  # entries per masked column before the cache starts over
JSON_STRUCTURES = 4_096  # JSON structures planned per column (compiled loop)
JSON_STRINGS = 131_072  # masked strings cached per JSON path (compiled loop)
CACHE_TRIAL = 8_192  # rows after which a masked column's cache is kept only if it is useful:
CACHE_USEFUL = 0.9  # fewer than this share of its values were new
BLOCK_BYTES = 256 * 1024  # rows sent to a pool process at a time: big enough to pay for IPC

_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r\b\f\v]")
FLAT = str.maketrans("\n\r\t\\", "    ")  # how the leak search sees a value (`leaks`)
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r",
                          "\b": "\\b", "\f": "\\f", "\v": "\\v"})


class CopyFormatError(ValueError):
    """The COPY stream is not what PostgreSQL's text format produces (a bug, never data)."""


class ColumnMaskingError(ValueError):
    """A masker refused a value; the message names the column and the masker's reason (which
    never quotes the value)."""

    def __init__(self, column: str, reason: BaseException | str) -> None:
        super().__init__(f"column {column}: {reason}")
        self.column = column
        self.reason = str(reason)

    def __reduce__(self) -> tuple[type[ColumnMaskingError], tuple[str, str]]:
        return type(self), (self.column, self.reason)  # raised in a pool process, too


def _unescape_one(m: re.Match[bytes]) -> bytes:
    octal, hexa, other = m.groups()
    if octal is not None:
        return bytes((int(octal, 8) & 0xFF,))
    if hexa is not None:
        return bytes((int(hexa, 16),))
    return _SIMPLE.get(other, other)


def decode_field(raw: bytes) -> str | None:
    """One COPY text field as the value's text representation (None for NULL)."""
    if raw == NULL:
        return None
    if b"\\" in raw:
        raw = _UNESCAPE.sub(_unescape_one, raw)
    return raw.decode("utf-8")


def encode_field(value: str | None) -> bytes:
    """A value's text representation as one COPY text field."""
    if value is None:
        return NULL
    if _NEEDS_ESCAPE.search(value):
        value = value.translate(_ESCAPES)
    return value.encode("utf-8")


@dataclass(frozen=True)
class MaskPlan:
    """What a pool process needs to rebuild a table's RowMasker (picklable)."""

    columns: tuple[str, ...]
    rules: tuple[tuple[int, ColumnRule], ...]  # column position, its rule
    key: bytes = field(repr=False)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Columns searched for leaks after masking (position, rule), when a finder is given.
    search: tuple[tuple[int, ColumnRule | None], ...] = ()

    @classmethod
    def of(cls, columns: Sequence[str], rules: Mapping[int, ColumnRule], *, key: bytes,
           search: Mapping[int, ColumnRule | None] | None = None) -> MaskPlan:
        return cls(columns=tuple(columns), rules=tuple(rules.items()), key=key,
                   search=tuple((search or {}).items()))

    def row_masker(self, finder: Finder | None = None,
                   shared: SharedMaskers | None = None, *, compiled: bool = COMPILED
                   ) -> RowMasker:
        """The row masker of this plan; its maskers from `shared` (a fresh set when None);
        rows walked by the compiled loop unless `compiled` is False."""
        from pipelines.data.masking import SharedMaskers

        shared = shared or SharedMaskers(self.key)
        searched = {i for i, _ in self.search} if finder is not None else set()
        # A searched column under a `json` rule is masked and made searchable in one pass.
        paired = {i: shared.json_with_search(rule) for i, rule in self.rules
                  if i in searched and rule.transformer == "json"}
        maskers = {i: shared.masker(rule) for i, rule in self.rules if i not in paired}
        jsons = {i: shared.json(rule) for i, rule in self.rules if rule.transformer == "json"}
        direct = {i: found for i, rule in self.rules
                  if i in maskers and (found := shared.direct(rule)) is not None}
        return RowMasker(maskers, columns=self.columns, plan=self, finder=finder,
                         search=sorted(searched - paired.keys()), paired=paired, jsons=jsons,
                         direct=direct, compiled=compiled)


_POOLED: dict[str, RowMasker] = {}  # in a pool process: plan token → its row masker
_FINDER: list[Finder] = []  # in a pool process: the build's leak finder (`install_finder`)
_SHARED: dict[bytes, SharedMaskers] = {}  # in a pool process: the build's maskers, by key


def install_finder(finder: Finder | None) -> None:
    """A pool's initializer: the finder every plan with searched columns uses in this
    process (sent once per process rather than with every block). The objects the process
    was forked with are frozen: the garbage collector would otherwise walk them all, again and
    again, though masking makes no cycles among them."""
    gc.freeze()
    _FINDER[:] = [] if finder is None else [finder]


def _pooled(plan: MaskPlan) -> RowMasker:
    """In a pool process: the row masker of `plan`, made once and kept."""
    masker = _POOLED.get(plan.token)
    if masker is None:
        from pipelines.data.masking import SharedMaskers

        if plan.key not in _SHARED:  # a process serves one build: one key
            _SHARED.clear()
            _SHARED[plan.key] = SharedMaskers(plan.key)
        masker = _POOLED[plan.token] = plan.row_masker(_FINDER[0] if _FINDER else None,
                                                       _SHARED[plan.key])
    return masker


def mask_block(plan: MaskPlan, block: bytes) -> tuple[bytes, Hits]:
    """In a pool process: mask a block of whole rows (ending in a newline); and the sampled
    values found in its searched columns."""
    masker = _pooled(plan)
    return masker.rows(block[:-1]), masker.take_hits()


@dataclass(frozen=True)
class CopyJob:
    """A table, or a range of its pages, that a pool process copies on connections of its own
    (`run_job`): it reads the source in the build's exported snapshot, masks as it reads and
    writes the target, and no row passes through the building process (which would cost it
    a copy in, a copy out and the pickling of every block both ways)."""

    source: str = field(repr=False)  # asyncpg DSNs: they may hold a password
    target: str = field(repr=False)
    snapshot: str  # the exported snapshot the source is read in
    query: str
    schema: str
    table: str
    columns: tuple[str, ...]
    plan: MaskPlan | None  # None: nothing to mask or search
    session: tuple[str, ...] = ()  # statements that prepare the target session
    timeout: float = 10.0  # connecting


async def join_snapshot(conn: Any, snapshot: str) -> None:
    """Begin a read-only transaction on `conn` in an exported snapshot (as `pg_dump -j`'s
    workers do), with no timeouts and an empty `search_path`."""
    from bot.pg import quote_literal

    await conn.execute(
        "SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; "
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
        f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot)}; SET LOCAL search_path = ''")


def run_job(job: CopyJob) -> tuple[CopyStats, Hits]:
    """In a pool process: do `job`; its figures and what the leak search found."""
    return asyncio.run(_run_job(job))


async def _run_job(job: CopyJob) -> tuple[CopyStats, Hits]:
    import asyncpg

    source = await asyncpg.connect(job.source, timeout=job.timeout)
    target = None
    done = False
    try:
        target = await asyncpg.connect(job.target, timeout=job.timeout)
        await join_snapshot(source, job.snapshot)
        for statement in job.session:
            await target.execute(statement)
        masker = None if job.plan is None else _pooled(job.plan)
        stats = await pipe(source, job.query, target=target, table=job.table,
                           schema=job.schema, columns=job.columns, masker=masker)
        done = True
        return stats, ({} if masker is None else masker.take_hits())
    finally:
        for conn in (source, target):
            if conn is None:
                continue
            if done:
                await conn.close(timeout=job.timeout)
            else:  # mid-COPY a polite close could wait; the build is being abandoned
                conn.terminate()


def _field_masker(mask: Masker) -> Callable[[bytes], bytes]:
    """`mask` on one COPY text field: unescape, mask, escape — each only when needed (a field
    without a backslash has nothing to unescape; most masked text has nothing to escape)."""
    def field(raw: bytes) -> bytes:
        if b"\\" in raw:
            out = mask(None if raw == NULL else _UNESCAPE.sub(_unescape_one, raw).decode("utf-8"))
        else:
            out = mask(raw.decode("utf-8"))
        if out is None:
            return NULL
        if out.isprintable() and "\\" not in out:
            return out.encode("utf-8")
        return out.translate(_ESCAPES).encode("utf-8")

    return field


def _paired_masker(both: Callable[[str], tuple[str, str]]
                   ) -> Callable[[bytes], tuple[bytes, bytes]]:
    """`both` on one COPY text field: the masked field, and the searched text (flattened
    as `flat_field` does)."""
    def field(raw: bytes) -> tuple[bytes, bytes]:
        if b"\\" in raw:
            if raw == NULL:
                return NULL, b""
            text = _UNESCAPE.sub(_unescape_one, raw).decode("utf-8")
        else:
            text = raw.decode("utf-8")
        out, searched = both(text)
        plain = out.isprintable() and "\\" not in out
        masked = out.encode("utf-8") if plain else out.translate(_ESCAPES).encode("utf-8")
        if not plain or not searched.isprintable():
            searched = searched.translate(FLAT)
        return masked, searched.encode("utf-8")

    return field


def flat_field(raw: bytes) -> bytes:
    """A COPY text field as the leak search reads it: its value with tabs, newlines, carriage
    returns and backslashes made spaces (as the sampled values are); NULL is empty."""
    if raw == NULL:
        return b""
    text = decode_field(raw)
    assert text is not None
    return text.translate(FLAT).encode("utf-8")


class RowMasker:
    """Rewrites a COPY text stream chunk by chunk, masking the fields at the given positions.

    Chunks may end anywhere, even inside a row or an escape: the unfinished row is held back
    until the chunk that completes it arrives.
    """

    def __init__(self, maskers: Mapping[int, Masker], *, columns: Sequence[str],
                 plan: MaskPlan | None = None, search: Sequence[int] = (),
                 paired: Mapping[int, Callable[[str], tuple[str, str]]] | None = None,
                 finder: Finder | None = None,
                 jsons: Mapping[int, _JsonMasker] | None = None,
                 direct: Mapping[int, Callable[[str], str | None]] | None = None,
                 compiled: bool = COMPILED) -> None:
        self._columns = tuple(columns)
        self._width = len(columns)
        self._pending: list[bytes] = []
        # Per masked column: its position, the field masker, and a cache raw field → masked
        # field, so a repeated value (a status, a city, a customer's e-mail on each of their
        # orders) skips unescaping, masking and escaping. Masking is deterministic, so a cached
        # result is the result. A column whose values hardly repeat (a JSON document per row)
        # gets no cache: it would only cost a lookup and an insert per row.
        self._fields: list[tuple[int, Callable[[bytes], bytes], dict[bytes, bytes] | None]] = [
            (i, _field_masker(mask), {}) for i, mask in sorted(maskers.items())]
        self._misses = [0] * len(self._fields)
        self._seen = 0
        self.plan = plan  # set when the masking may run in a process pool
        # Leak search: the masked rows' fields at `search` positions go to `finder`, and so
        # does what the `paired` maskers (masking and making searchable in one pass) return
        # beside the masked field.
        self._finder = finder
        self._search = list(search) if finder is not None else []
        self._paired = [(i, _paired_masker(both)) for i, both in sorted((paired or {}).items())]
        self.hits: Hits = {}
        # The JSON masker of each JSON column masked or paired above: the compiled loop masks
        # its documents itself, with the Python field function for the ones it cannot.
        self._jsons = dict(jsons or {})
        # A masked column's transformer, when it is compiled: the compiled loop calls it
        # itself, without the field masker's Python frames around it.
        self._direct = dict(direct or {})
        # Those whose transformer costs about what a lookup in a big cache does: the compiled
        # loop keeps no cache for them but the values it met a moment ago.
        from pipelines.data.masking import is_compiled

        self._cheap = {i for i, d in self._direct.items() if is_compiled(d)}
        if compiled and _rowmask is None:
            raise ValueError("the compiled row loop is not built (pipelines/data/_rowmask.c)")
        self._loop = self._compiled if compiled else None

    @property
    def searching(self) -> bool:
        return bool(self._search)

    def take_hits(self) -> Hits:
        """The values found since the last call."""
        hits, self.hits = self.hits, {}
        return hits

    def merge(self, hits: Hits) -> None:
        """Add values found elsewhere (in a pool process) to `hits`."""
        for position, found in hits.items():
            mine = self.hits.setdefault(position, {})
            for source, values in found.items():
                mine.setdefault(source, set()).update(values)

    def column(self, position: int) -> str:
        return self._columns[position]

    def split(self, chunk: bytes) -> bytes:
        """The complete rows that `chunk` finishes, unmasked, each ending in a newline."""
        end = chunk.rfind(b"\n")
        if end < 0:
            self._pending.append(chunk)
            return b""
        rows = chunk[:end + 1]
        if self._pending:
            rows = b"".join((*self._pending, rows))
        self._pending = [chunk[end + 1:]] if end + 1 < len(chunk) else []
        return rows

    def feed(self, chunk: bytes) -> bytes:
        """The complete rows that `chunk` finishes, masked; b"" while a row is unfinished."""
        rows = self.split(chunk)
        return self.rows(rows[:-1]) if rows else b""

    def rows(self, block: bytes) -> bytes:
        """Mask whole rows (separated, not ended, by newlines); the result ends in one."""
        sizes = [0 if cache is None else len(cache) for _, _, cache in self._fields]
        if self._loop is not None:
            out, searched, beside, count = self._loop(block)
        else:
            lines = block.split(b"\n")
            searched = [[] for _ in self._search]
            beside = [[] for _ in self._paired]
            out = self._rows(lines, searched, beside)
            count = len(lines)
        self._tune(count, sizes)
        if self._finder is not None:
            self._find(searched, beside, flat=self._loop is not None)
        return out

    def _find(self, searched: list[list[bytes]], beside: list[list[bytes]], *,
              flat: bool) -> None:
        """Hand the searched fields to the finder (`flat`: already as `flat_field` makes
        them, as the compiled loop hands them over)."""
        assert self._finder is not None
        for position, raws in zip(self._search, searched, strict=True):
            self._found(position, raws if flat else [
                raw if b"\\" not in raw else flat_field(raw) for raw in raws])
        for (position, _), values in zip(self._paired, beside, strict=True):
            self._found(position, values)

    def _found(self, position: int, values: list[bytes]) -> None:
        assert self._finder is not None
        found = self._finder(values)
        if found:
            self.merge({position: found})

    def close(self) -> None:
        """The stream has ended: it must not end inside a row."""
        if any(self._pending):
            raise CopyFormatError("the COPY stream ended inside a row")

    def _compiled(self, block: bytes
                  ) -> tuple[bytes, list[list[bytes]], list[list[bytes]], int]:
        """`_rows` by the compiled loop (`_rowmask.c`): the masked rows, the searched fields
        and the searched text of the paired columns, as `_rows` collects them; and the number
        of rows."""
        fields = [(i, None if i in self._cheap else cache, mask, self._direct.get(i))
                  for i, mask, cache in self._fields if i not in self._jsons]
        paired = dict(self._paired)
        plain = {i: mask for i, mask, _ in self._fields}
        jsons: list[tuple[int, dict[bytes, Any], Callable[[list[bytes]], Any],
                          Callable[[bytes], Any], bool, int, int]]
        jsons = [(i, masker.structures, masker.c_plan, paired.get(i) or plain[i], i in paired,
                  JSON_STRUCTURES, JSON_STRINGS) for i, masker in sorted(self._jsons.items())]
        where: list[int] = []
        try:
            return _rowmask.mask_rows(block, self._width, fields, jsons, self._search,
                                      flat_field, CopyFormatError, where)
        except CopyFormatError:
            raise
        except (ValueError, UnicodeError) as exc:
            if not where:
                raise
            raise ColumnMaskingError(self._columns[where[0]], exc) from None

    def _rows(self, lines: list[bytes], searched: list[list[bytes]],
              beside: list[list[bytes]]) -> bytes:
        width, fields_ = self._width, self._fields
        search = [(position, into.append)
                  for position, into in zip(self._search, searched, strict=True)]
        paired = [(position, both, into.append)
                  for (position, both), into in zip(self._paired, beside, strict=True)]
        out = []
        i = -1
        try:
            for line in lines:
                fields = line.split(b"\t")
                if len(fields) != width:
                    raise CopyFormatError(
                        f"a COPY row has {len(fields)} fields, expected {width}")
                for i, mask, cache in fields_:
                    raw = fields[i]
                    if cache is None:
                        fields[i] = mask(raw)
                        continue
                    done = cache.get(raw)
                    if done is None:
                        done = cache[raw] = mask(raw)
                    fields[i] = done
                for i, both, keep in paired:
                    fields[i], found = both(fields[i])
                    keep(found)
                for position, keep in search:
                    keep(fields[position])
                out.append(b"\t".join(fields))
        except CopyFormatError:
            raise
        except (ValueError, UnicodeError) as exc:
            raise ColumnMaskingError(self._columns[i], exc) from None
        out.append(b"")
        return b"\n".join(out)

    def _tune(self, rows: int, sizes: list[int]) -> None:
        """After a block: bound each cache, and drop the cache of a column whose values have
        mostly been new so far (judged on the first `CACHE_TRIAL` rows)."""
        trial = self._seen < CACHE_TRIAL
        self._seen += rows
        for n, (i, mask, cache) in enumerate(self._fields):
            if cache is None:
                continue
            if trial:
                self._misses[n] += len(cache) - sizes[n]
                if self._seen >= CACHE_TRIAL and self._misses[n] > CACHE_USEFUL * self._seen:
                    self._fields[n] = (i, mask, None)
                    continue
            if len(cache) >= FIELD_CACHE:
                cache.clear()


@dataclass(frozen=True)
class CopyStats:
    rows: int
    bytes: int


async def pipe(source: Any, query: str, *args: Any, target: Any, table: str, schema: str,
               columns: Sequence[str], masker: RowMasker | None = None,
               binary: bool = False, queue_chunks: int = QUEUE_CHUNKS,
               pool: Executor | None = None) -> CopyStats:
    """Stream `COPY (query) TO STDOUT` on `source` into `COPY schema.table (columns) FROM
    STDIN` on `target`, through `masker` when given (text format only) — in `pool`'s processes
    when given and the masker has a plan.

    Either side failing cancels the other; the exception propagates.
    """
    if masker is not None and binary:
        raise ValueError("masking needs the text format")
    fmt = "binary" if binary else "text"
    queue: asyncio.Queue[bytes | asyncio.Future[tuple[bytes, Hits]] | None] = asyncio.Queue(
        maxsize=queue_chunks)
    sent = 0
    plan = masker.plan if masker is not None and pool is not None else None
    loop = asyncio.get_running_loop()
    held: list[bytes] = []  # whole rows waiting to fill a block for the pool
    held_bytes = 0

    async def submit() -> None:
        nonlocal held_bytes
        if held and plan is not None:
            block = b"".join(held)
            held.clear()
            held_bytes = 0
            await queue.put(loop.run_in_executor(pool, mask_block, plan, block))

    async def output(chunk: bytes) -> None:
        nonlocal held_bytes
        if plan is not None:
            assert masker is not None
            rows = masker.split(bytes(chunk))
            if rows:
                held.append(rows)
                held_bytes += len(rows)
                if held_bytes >= BLOCK_BYTES:
                    await submit()
            return
        data = masker.feed(bytes(chunk)) if masker is not None else bytes(chunk)
        if data:
            await queue.put(data)

    async def produce() -> None:
        await source.copy_from_query(query, *args, output=output, format=fmt)
        if masker is not None:
            masker.close()
        await submit()
        await queue.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        while (item := await queue.get()) is not None:
            data = await _merged(item, masker) if isinstance(item, asyncio.Future) else item
            sent += len(data)
            yield data

    async def consume() -> str:
        status: str = await target.copy_to_table(table, source=chunks(), columns=list(columns),
                                                 schema_name=schema, format=fmt)
        return status

    async with first_error(), asyncio.TaskGroup() as group:
        group.create_task(produce())
        consumer = group.create_task(consume())
    return CopyStats(rows=_copied(consumer.result()), bytes=sent)


async def _merged(block: asyncio.Future[tuple[bytes, Hits]], masker: RowMasker | None
                  ) -> bytes:
    """A block masked in a pool process; what its leak search found goes to `masker`."""
    data, hits = await block
    if masker is not None and hits:
        masker.merge(hits)
    return data


@asynccontextmanager
async def first_error() -> AsyncIterator[None]:
    """Re-raise a TaskGroup's first error itself, not wrapped in an ExceptionGroup, so callers
    can sort failures by type."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _copied(status: str) -> int:
    """The row count of a `COPY n` command tag."""
    tag, _, count = status.rpartition(" ")
    return int(count) if tag == "COPY" and count.isdigit() else 0
