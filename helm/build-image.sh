#!/usr/bin/env bash
# Build Ephem's image from the Dockerfile with buildah and run `ephem --version` in
# it, as the unprivileged user the image declares.
#
#   helm/build-image.sh                  # python:3.11-(slim-)bookworm + hashicorp/terraform
#   helm/build-image.sh --local-bases    # no container registry reachable: make both bases here
#
# --local-bases makes the images the Dockerfile starts from without a container registry:
# a Debian bookworm root filesystem with python3.11 (debootstrap, from the Debian mirror), the
# same with a C compiler and the Python headers for the build stage (the masking extensions),
# and an image holding the terraform binary found on PATH (its version becomes
# TERRAFORM_VERSION, which the Dockerfile checks). Everything else (Ephem's dependencies) comes from PyPI during
# the build, as in any build.
#
# Settings (environment): IMAGE (default localhost/ephem:<project version>),
# TERRAFORM_VERSION (default 1.11.4), STORAGE_DRIVER (default vfs, which works inside containers too).
set -euo pipefail
cd "$(dirname "$0")/.."

local_bases=false
[[ "${1:-}" == "--local-bases" ]] && local_bases=true

if ! command -v buildah >/dev/null 2>&1; then
  echo "buildah is not installed (Debian: apt-get install -y buildah)" >&2
  exit 2
fi
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
image=${IMAGE:-localhost/ephem:$version}
terraform_version=${TERRAFORM_VERSION:-1.11.4}
args=()

log() { printf '\n== %s\n' "$*"; }

if $local_bases; then
  tf=$(command -v terraform || true)
  [[ -n "$tf" ]] || { echo "--local-bases needs a terraform binary on PATH" >&2; exit 2; }
  terraform_version=$("$tf" version 2>/dev/null | sed -n '1s/^Terraform v//p')
  rootfs=localhost/ephem-base/debian:bookworm-python3
  python_base=localhost/ephem-base/python:3.11-bookworm
  terraform_base=localhost/ephem-base/terraform:$terraform_version

  if ! buildah inspect --type image "$rootfs" >/dev/null 2>&1; then
    log "base: Debian bookworm with python3.11 (debootstrap)"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$root" http://deb.debian.org/debian >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    ctr=$(buildah from scratch)
    buildah copy --quiet "$ctr" "$root" /
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd /bin/bash "$ctr"
    buildah commit --quiet --rm "$ctr" "$rootfs" >/dev/null
  fi
  # pip inside the build reaches PyPI the way this machine's pip does: with this machine's
  # certificate authorities (a proxy's own CA, where there is one).
  log "base: $python_base with this machine's CA bundle for pip"
  ctr=$(buildah from "$rootfs")
  buildah copy --quiet "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
  buildah config --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$ctr"
  buildah commit --quiet --rm "$ctr" "$python_base" >/dev/null

  build_base=localhost/ephem-base/python:3.11-bookworm-build
  log "base: $build_base (with gcc and the Python headers, for the build stage)"
  ctr=$(buildah from "$python_base")
  buildah run "$ctr" -- sh -c 'apt-get update -qq && apt-get install -y -qq \
    --no-install-recommends gcc libc6-dev python3-dev >/dev/null && rm -rf /var/lib/apt/lists/*'
  buildah commit --quiet --rm "$ctr" "$build_base" >/dev/null

  log "base: terraform $terraform_version from $tf"
  ctr=$(buildah from scratch)
  buildah copy --quiet --chmod 0755 "$ctr" "$tf" /bin/terraform
  buildah commit --quiet --rm "$ctr" "$terraform_base" >/dev/null
  args+=(--build-arg "PYTHON_IMAGE=$python_base" --build-arg "BUILD_IMAGE=$build_base"
         --build-arg "TERRAFORM_IMAGE=$terraform_base")
fi

log "build $image"
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
before=$(buildah containers -q | sort)
buildah build --format docker --network host --layers=false -f Dockerfile -t "$image" \
  --build-arg "TERRAFORM_VERSION=$terraform_version" --build-arg "VERSION=$version" \
  --build-arg "REVISION=$revision" "${args[@]}" .

# buildah 1.28 leaves the working container of a stage that only names an image (terraform).
comm -13 <(echo "$before") <(buildah containers -q | sort) | xargs -r buildah rm >/dev/null

log "labels"
buildah inspect --type image --format '{{.OCIv1.Config.Labels}}' "$image"

log "run: ephem --version, terraform version, the user"
ctr=$(buildah from "$image")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
# --version where the CLI has it; the usage (--help, exit 0) otherwise.
usage=$(buildah run "$ctr" -- ephem --help)
if [[ "$usage" == *--version* ]]; then
  buildah run "$ctr" -- ephem --version
else
  echo "(this ephem has no --version; its usage:)"
  sed -n 1,3p <<<"$usage"
fi
buildah run "$ctr" -- terraform version | sed -n 1p
buildah run "$ctr" -- python3 -c 'import os; print("uid", os.getuid(), "gid", os.getgid())'

# As the chart runs it: root filesystem read-only, a fresh tmpfs on /tmp, uid 10001 and only
# the image's environment. (podman --read-only would say the same; this needs only root.)
if [[ $(id -u) == 0 ]]; then
  log "run read-only: ephem --help and ephem db upgrade --help, as uid 10001, / read-only"
  ro_ctr=$(buildah from "$image")
  mnt=$(buildah mount "$ro_ctr")
  ro=$(mktemp -d)
  cleanup_ro() {
    umount "$ro/tmp" 2>/dev/null || true
    umount "$ro" 2>/dev/null || true
    buildah umount "$ro_ctr" >/dev/null 2>&1 || true
    buildah rm "$ro_ctr" >/dev/null 2>&1 || true
    rmdir "$ro" 2>/dev/null || true
  }
  trap 'cleanup_ro; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  mount --bind "$mnt" "$ro"
  mount -o remount,bind,ro "$ro"
  mount -t tmpfs tmpfs "$ro/tmp"
  if touch "$ro/probe" 2>/dev/null; then echo "the root is writable: not a read-only run" >&2; exit 1; fi
  image_env=$(buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$image")
  mapfile -t env_args <<<"$image_env"
  env -i "${env_args[@]}" chroot --userspec=10001:10001 "$ro" /bin/sh -c \
    'cd /tmp && ephem --help | sed -n 1p && ephem db upgrade --help | sed -n 1p && python3 -c "import bot.cli, handlers, pipelines; print(\"imports ok\")"'
fi
