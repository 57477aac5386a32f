"""A bot process that applies one environment's workspace and prints what it emits: the tests
kill it with SIGKILL mid-apply and resume the environment from another process.

Usage: python -m tests.terraform_child '<json: state_url, schema, module, workdir, env_id, name,
variables>'
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path

from bot.config import Blueprint, TerraformBackend, TerraformConfig
from bot.domain import DataMode, DataRequest, ReleaseSet
from pipelines.base import PhaseContext
from pipelines.infra.terraform import TerraformProvider


async def main(spec: dict[str, object]) -> None:
    config = TerraformConfig(
        module=Path(str(spec["module"])), workdir=Path(str(spec["workdir"])),
        backend=TerraformBackend(schema_name=str(spec["schema"])),
        variables=dict(spec.get("variables") or {}),  # type: ignore[call-overload]
        timeout=timedelta(minutes=2), parallelism=4)
    provider = TerraformProvider(config, state_url=str(spec["state_url"]))

    async def emit(text: str) -> None:
        print(text, flush=True)

    ctx = PhaseContext(env_id=int(str(spec["env_id"])), name=str(spec["name"]), owner_id="U1",
                       release_set=ReleaseSet({}), data=DataRequest(DataMode.NONE),
                       blueprint=Blueprint(), outputs={}, emit=emit)
    await provider.apply(ctx)
    print("applied", flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
