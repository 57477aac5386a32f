"""The bot's own state in PostgreSQL: models, repositories, migrations.

Repositories flush and never commit; the transaction boundary is `Store.transaction()`, held by
the edge (one Slack request, one job step), which commits or rolls back as a whole.
"""

from bot.store.db import Store

__all__ = ["Store"]
