"""Job execution: claiming jobs from PostgreSQL, running them on asyncio workers with leases,
one job per environment at a time, and draining on shutdown. See `worker.Executor`."""

from bot.executor.worker import Executor

__all__ = ["Executor"]
