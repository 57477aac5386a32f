"""What the source database is made of, read from `pg_catalog` inside the build's snapshot.

Why: the snapshot builder recreates the source schema in the golden database — tables, columns,
defaults, types, sequences and functions before the rows, then keys, constraints, indexes, views
and triggers after them — and the subsetter follows the foreign keys. Both need the same, exact
picture, so it is read once here. Definitions come from the server's own `pg_get_*` functions
(the ones `pg_dump` uses), read with an empty `search_path` so every name in them is
schema-qualified. No `pg_dump` binary is needed: its version would have to match the server's,
and it could not share the build's exported snapshot and temporary tables as this does.

Not supported (refused with a message naming the tables): partitioned tables and table
inheritance. Not copied: ownership and privileges (a clone is given to its environment's role),
comments, row-level security policies, publications, statistics objects.

Neighbours: `pipelines.data.schema` renders and applies the DDL; `pipelines.data.subset` uses
keys and foreign keys; `pipelines.data.snapshot` drives both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.errors import PermanentError
from bot.pg import quote_ident

TEXTLIKE = ("text", "varchar", "bpchar", "json", "jsonb", "citext")

_USER_NS = """n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"""


def _not_member(classid: str, objid: str) -> str:
    """SQL: the object is not part of an extension (the extension creates it)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{classid}'::regclass "
            f"AND e.objid = {objid} AND e.deptype = 'e')")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): schema-qualified where needed
    not_null: bool = False
    default: str | None = None
    identity: str = ""  # 'a' (ALWAYS), 'd' (BY DEFAULT) or ''
    generated: str = ""  # 's' (STORED) or ''
    collation: str | None = None  # only when it differs from the type's
    textlike: bool = False  # text, varchar, char, json, jsonb, citext (or a domain over one)


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str  # p (primary key), u (unique), f (foreign key), c (check), x (exclusion)
    definition: str  # pg_get_constraintdef()
    columns: tuple[str, ...] = ()
    ref_table: str | None = None  # foreign keys: the referenced table's key
    ref_columns: tuple[str, ...] = ()
    validated: bool = True  # False: NOT VALID in the source (and `definition` says so)


@dataclass(frozen=True)
class SequenceDef:
    schema: str
    name: str
    type: str
    start: int
    increment: int
    minimum: int
    maximum: int
    cache: int
    cycle: bool
    owner: tuple[str, str] | None = None  # (table key, column): serial or identity
    identity: bool = False
    last_value: int | None = None  # the source's, when readable and ever used

    @property
    def ident(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def options(self) -> str:
        return (f"INCREMENT BY {self.increment} MINVALUE {self.minimum} MAXVALUE {self.maximum} "
                f"START WITH {self.start} CACHE {self.cache}{' CYCLE' if self.cycle else ''}")


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...]
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[str, ...] = ()  # CREATE INDEX statements (not those of constraints)
    unlogged: bool = False
    options: tuple[str, ...] = ()  # reloptions such as fillfactor=70
    estimated_rows: int = 0
    size: int = 0  # bytes on disk, to schedule the biggest tables first

    @property
    def key(self) -> str:
        """`schema.name`: how tables are identified in this package."""
        return f"{self.schema}.{self.name}"

    @property
    def display(self) -> str:
        """How the rules file names the table: bare in `public`, qualified elsewhere."""
        return self.name if self.schema == "public" else self.key

    @property
    def ident(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def copy_columns(self) -> tuple[str, ...]:
        """The columns COPY moves (generated columns are computed on the target)."""
        return tuple(c.name for c in self.columns if not c.generated)

    @property
    def primary_key(self) -> tuple[str, ...]:
        return next((c.columns for c in self.constraints if c.kind == "p"), ())

    def foreign_keys(self) -> list[Constraint]:
        return [c for c in self.constraints if c.kind == "f"]


@dataclass(frozen=True)
class Statement:
    """A definition that is created as it is: a type, a function, a view, a trigger."""

    what: str  # "function public.f(integer)": for error messages
    sql: str


@dataclass(frozen=True)
class Catalog:
    encoding: str
    schemas: tuple[str, ...]
    extensions: tuple[tuple[str, str], ...]  # (name, schema)
    types: tuple[Statement, ...]
    sequences: tuple[SequenceDef, ...]
    functions: tuple[Statement, ...]
    tables: Mapping[str, Table]  # by key
    views: tuple[Statement, ...]  # views and materialized views, in creation (oid) order
    triggers: tuple[Statement, ...]

    def resolve(self, name: str) -> Table:
        """The table a rules file means by `name` (`customers` or `sales.orders`)."""
        key = name if "." in name else f"public.{name}"
        table = self.tables.get(key)
        if table is None:
            matches = [t for t in self.tables.values() if t.name == name]
            if "." in name or len(matches) != 1:
                raise PermanentError(f"the rules name table `{name}`, which the source lacks")
            table = matches[0]
        return table


async def read_catalog(conn: Any) -> Catalog:
    """Read the schema on `conn` (in the build's transaction, `search_path` empty)."""
    await _refuse_unsupported(conn)
    tables = await _tables(conn)
    return Catalog(
        encoding=await conn.fetchval(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database "
            "WHERE datname = current_database()"),
        schemas=tuple(r[0] for r in await conn.fetch(
            f"SELECT n.nspname FROM pg_namespace n WHERE {_USER_NS} "
            f"AND {_not_member('pg_namespace', 'n.oid')} ORDER BY n.oid")),
        extensions=tuple((r[0], r[1]) for r in await conn.fetch(
            "SELECT e.extname, n.nspname FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname <> 'plpgsql' ORDER BY e.oid")),
        types=tuple(await _types(conn)),
        sequences=tuple(await _sequences(conn)),
        functions=tuple(Statement(f"function {r[0]}", r[1] + ";") for r in await conn.fetch(
            f"""SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE {_USER_NS} AND p.prokind IN ('f', 'p')
                  AND {_not_member('pg_proc', 'p.oid')} ORDER BY p.oid""")),
        tables=tables,
        views=tuple(await _views(conn)),
        triggers=tuple(Statement(f"trigger {r[0]} on {r[1]}", r[2] + ";")
                       for r in await conn.fetch(
            """SELECT t.tgname, t.tgrelid::regclass::text, pg_get_triggerdef(t.oid)
               FROM pg_trigger t WHERE NOT t.tgisinternal AND t.tgrelid = ANY($1::oid[])
               ORDER BY t.oid""", [t.oid for t in tables.values()])),
    )


async def _refuse_unsupported(conn: Any) -> None:
    rows = await conn.fetch(
        f"""SELECT c.oid::regclass::text FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {_USER_NS} AND (c.relkind = 'p' OR c.relispartition
               OR EXISTS (SELECT 1 FROM pg_inherits i
                          WHERE i.inhrelid = c.oid OR i.inhparent = c.oid))
            ORDER BY 1 LIMIT 10""")
    if rows:
        names = ", ".join(r[0] for r in rows)
        raise PermanentError(f"partitioned or inherited tables are not supported yet: {names}")


async def _tables(conn: Any) -> dict[str, Table]:
    rels = await conn.fetch(
        f"""SELECT c.oid, n.nspname, c.relname, c.relpersistence = 'u' AS unlogged,
                   coalesce(c.reloptions, '{{}}') AS options,
                   greatest(c.reltuples, 0)::bigint AS estimated,
                   pg_total_relation_size(c.oid) AS size
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND {_USER_NS} AND {_not_member('pg_class', 'c.oid')}
            ORDER BY n.nspname, c.relname""")
    oids = [r["oid"] for r in rels]
    columns = await _columns(conn, oids)
    names = {oid: {num: col.name for num, col in cols} for oid, cols in columns.items()}
    keys = {r["oid"]: f"{r['nspname']}.{r['relname']}" for r in rels}
    constraints: dict[int, list[Constraint]] = {oid: [] for oid in oids}
    for r in await conn.fetch(
            """SELECT conname, contype::text AS contype, conrelid, pg_get_constraintdef(oid) AS def,
                      conkey, confrelid, confkey, convalidated
               FROM pg_constraint WHERE conrelid = ANY($1::oid[])
                 AND contype IN ('p', 'u', 'f', 'c', 'x')
               ORDER BY conrelid, contype, conname""", oids):
        cols = names[r["conrelid"]]
        ref = r["confrelid"] or None
        constraints[r["conrelid"]].append(Constraint(
            name=r["conname"], kind=r["contype"], definition=r["def"],
            columns=tuple(cols[n] for n in r["conkey"] or ()),
            ref_table=keys.get(ref) if ref else None,
            ref_columns=tuple(names[ref][n] for n in r["confkey"] or ()) if ref else (),
            validated=r["convalidated"]))
    indexes: dict[int, list[str]] = {oid: [] for oid in oids}
    for r in await conn.fetch(
            """SELECT i.indrelid, pg_get_indexdef(i.indexrelid) FROM pg_index i
               WHERE i.indrelid = ANY($1::oid[]) AND NOT EXISTS (
                 SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid
                   AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x'))
               ORDER BY i.indexrelid""", oids):
        indexes[r[0]].append(r[1] + ";")
    tables = {}
    for r in rels:
        oid = r["oid"]
        for con in constraints[oid]:
            if con.kind == "f" and con.ref_table is None:
                raise PermanentError(f"{keys[oid]}: foreign key {con.name} references a table "
                                     "outside the copied schemas")
        tables[keys[oid]] = Table(
            oid=oid, schema=r["nspname"], name=r["relname"],
            columns=tuple(col for _, col in columns.get(oid, [])),
            constraints=tuple(constraints[oid]), indexes=tuple(indexes[oid]),
            unlogged=r["unlogged"], options=tuple(r["options"]),
            estimated_rows=r["estimated"], size=r["size"])
    return tables


async def _columns(conn: Any, oids: Sequence[int]) -> dict[int, list[tuple[int, Column]]]:
    rows = await conn.fetch(
        f"""SELECT a.attrelid, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
                   a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS def,
                   a.attidentity::text AS attidentity, a.attgenerated::text AS attgenerated,
                   CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                        THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END
                     AS collation,
                   coalesce(bt.typname, t.typname) IN {TEXTLIKE!r} AS textlike
            FROM pg_attribute a
            JOIN pg_type t ON t.oid = a.atttypid
            LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            LEFT JOIN pg_collation co ON co.oid = a.attcollation
            LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
            WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attrelid, a.attnum""", oids)
    out: dict[int, list[tuple[int, Column]]] = {}
    for r in rows:
        out.setdefault(r["attrelid"], []).append((r["attnum"], Column(
            name=r["attname"], type=r["type"], not_null=r["attnotnull"], default=r["def"],
            identity=r["attidentity"], generated=r["attgenerated"], collation=r["collation"],
            textlike=r["textlike"])))
    return out


async def _sequences(conn: Any) -> list[SequenceDef]:
    rows = await conn.fetch(
        f"""SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL) AS type, s.seqstart,
                   s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                   tn.nspname || '.' || tc.relname AS owner_table, a.attname AS owner_column,
                   d.deptype = 'i' AS identity,
                   CASE WHEN has_sequence_privilege(c.oid, 'SELECT,USAGE')
                        THEN pg_sequence_last_value(c.oid) END AS last_value
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_sequence s ON s.seqrelid = c.oid
            LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
                 AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
            LEFT JOIN pg_class tc ON tc.oid = d.refobjid
            LEFT JOIN pg_namespace tn ON tn.oid = tc.relnamespace
            LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
            WHERE c.relkind = 'S' AND {_USER_NS} AND {_not_member('pg_class', 'c.oid')}
            ORDER BY c.oid""")
    return [SequenceDef(
        schema=r["nspname"], name=r["relname"], type=r["type"], start=r["seqstart"],
        increment=r["seqincrement"], minimum=r["seqmin"], maximum=r["seqmax"],
        cache=r["seqcache"], cycle=r["seqcycle"],
        owner=(r["owner_table"], r["owner_column"]) if r["owner_table"] else None,
        identity=bool(r["identity"]), last_value=r["last_value"]) for r in rows]


async def _types(conn: Any) -> list[Statement]:
    """Enums, domains, composite and range types, in creation order."""
    rows = await conn.fetch(
        f"""SELECT t.oid, t.typtype::text AS typtype, format_type(t.oid, NULL) AS name,
                   (SELECT array_agg(quote_literal(e.enumlabel) ORDER BY e.enumsortorder)
                      FROM pg_enum e WHERE e.enumtypid = t.oid) AS labels,
                   format_type(t.typbasetype, t.typtypmod) AS base, t.typnotnull, t.typdefault,
                   (SELECT array_agg('CONSTRAINT ' || quote_ident(c.conname) || ' '
                                     || pg_get_constraintdef(c.oid) ORDER BY c.conname)
                      FROM pg_constraint c WHERE c.contypid = t.oid) AS checks,
                   (SELECT array_agg(quote_ident(a.attname) || ' '
                                     || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                      FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0
                        AND NOT a.attisdropped) AS attributes,
                   (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r
                      WHERE r.rngtypid = t.oid) AS subtype
            FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            LEFT JOIN pg_class rc ON rc.oid = t.typrelid
            WHERE {_USER_NS} AND {_not_member('pg_type', 't.oid')}
              AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND rc.relkind = 'c'))
            ORDER BY t.oid""")
    out = []
    for r in rows:
        name, kind = r["name"], r["typtype"]
        if kind == "e":
            sql = f"CREATE TYPE {name} AS ENUM ({', '.join(r['labels'] or ())})"
        elif kind == "d":
            sql = f"CREATE DOMAIN {name} AS {r['base']}"
            if r["typdefault"] is not None:
                sql += f" DEFAULT {r['typdefault']}"
            if r["typnotnull"]:
                sql += " NOT NULL"
            for check in r["checks"] or ():
                sql += f" {check}"
        elif kind == "c":
            sql = f"CREATE TYPE {name} AS ({', '.join(r['attributes'] or ())})"
        else:
            sql = f"CREATE TYPE {name} AS RANGE (SUBTYPE = {r['subtype']})"
        out.append(Statement(f"type {name}", sql + ";"))
    return out


async def _views(conn: Any) -> list[Statement]:
    rows = await conn.fetch(
        f"""SELECT c.relkind::text AS relkind, c.oid::regclass::text AS name,
                   pg_get_viewdef(c.oid) AS def, c.reloptions
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('v', 'm') AND {_USER_NS} AND {_not_member('pg_class', 'c.oid')}
            ORDER BY c.oid""")
    out = []
    for r in rows:
        options = f" WITH ({', '.join(r['reloptions'])})" if r["reloptions"] else ""
        body = r["def"].rstrip().rstrip(";")
        if r["relkind"] == "m":
            out.append(Statement(f"materialized view {r['name']}",
                                 f"CREATE MATERIALIZED VIEW {r['name']}{options} AS {body} "
                                 "WITH DATA;"))
        else:
            out.append(Statement(f"view {r['name']}",
                                 f"CREATE VIEW {r['name']}{options} AS {body};"))
    return out
