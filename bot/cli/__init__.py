"""Ephem's front doors: the `ephem` console script and everything it starts.

Why a package of its own: these modules stand on everything else — the composition root
(`app`) wires `handlers` and `pipelines` into the kernel, and `serve`, `shell`, `demo`, `doctor`
and `snapshot` are built on it. Keeping them here lets the import contracts say plainly that
the kernel (the rest of `bot`) never reaches up into `handlers`, `pipelines` or this package.
"""

from bot.cli.main import main

__all__ = ["main"]
