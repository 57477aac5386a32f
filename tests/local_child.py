"""A bot process that deploys one environment with the `local` deployer and exits, printing
the pids it started: the test then checks the components outlived it and adopts them.

Usage: python local_child.py STATE_DIR BLUEPRINT_JSON ENV_ID ENV_NAME RELEASE_SET_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bot.config import Blueprint, parse_blueprint
from bot.domain import DataMode, DataRequest, ReleaseSet
from pipelines.base import PhaseContext
from pipelines.code.local import LocalDeployer


async def main(state: Path, blueprint: Blueprint, env_id: int, name: str,
               versions: dict[str, str]) -> None:
    async def emit(_: str) -> None:
        return None

    ctx = PhaseContext(env_id=env_id, name=name, owner_id="U1",
                       release_set=ReleaseSet(versions), data=DataRequest(DataMode.NONE),
                       blueprint=blueprint, outputs={}, emit=emit)
    assert blueprint.phases.code is not None and blueprint.phases.code.local is not None
    deployed = await LocalDeployer(blueprint.phases.code.local, state_dir=state).deploy(
        ctx, database_url=None)
    print(json.dumps({d.component: d.facts["pid"] for d in deployed}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), parse_blueprint(json.loads(sys.argv[2])),
                     int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])))
