"""PostgreSQL URL helpers shared by the store and the data phase.

Users write libpq-style URLs (`postgresql://user:pw@host:5432/db`, or `?host=/socket/dir`);
SQLAlchemy wants a driver in the scheme and asyncpg wants none. One place converts.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_SCHEMES = ("postgresql+asyncpg", "postgresql", "postgres")


def _split(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError("expected a postgresql:// URL")
    return scheme, rest


def sqlalchemy_url(url: str) -> str:
    """`postgresql+asyncpg://…` for SQLAlchemy."""
    return "postgresql+asyncpg://" + _split(url)[1]


def asyncpg_dsn(url: str) -> str:
    """`postgresql://…` for asyncpg."""
    return "postgresql://" + _split(url)[1]


def with_database(url: str, database: str, *, user: str | None = None,
                  password: str | None = None) -> str:
    """The same server, another database (and optionally other credentials)."""
    parts = urlsplit(asyncpg_dsn(url))
    netloc = parts.netloc
    if user is not None:
        hostport = netloc.rpartition("@")[2]
        cred = user if password is None else f"{user}:{password}"
        netloc = f"{cred}@{hostport}"
    return urlunsplit((parts.scheme, netloc, "/" + database, parts.query, ""))


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_host = parts.netloc.rpartition("@")
    user = user_host[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{user_host[2]}"))


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (for names that cannot be bound as parameters)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal (for DDL such as PASSWORD '…', which takes no parameters)."""
    return "'" + value.replace("'", "''") + "'"


_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)


def scrub(text: str) -> str:
    """Any URL password in free text (an error message, say) replaced by `***`."""
    return _URL_PASSWORD.sub(r"\1:***@", text)
