# Ephem's container image: `ephem` on a slim Python 3.11, as a non-root user, with the
# terraform binary the infra phase runs, able to run on a read-only root filesystem.
#
#   build stage    a virtualenv in /opt/ephem with `pip install .` (the project's own pins),
#                  on the full Python image of the same version: it has the C compiler that
#                  builds the masking extensions (without it they would fall back to Python)
#   runtime stage  that virtualenv, terraform, an unprivileged user; nothing else
#
# terraform comes from an image that carries the pinned version (TERRAFORM_IMAGE, by default
# hashicorp/terraform:<TERRAFORM_VERSION>); the build checks that the binary reports exactly
# TERRAFORM_VERSION. helm/build-image.sh builds this file with buildah or podman, and
# tests/test_image.py replays the build stage's install in a clean virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-bookworm
ARG TERRAFORM_VERSION=1.11.4
ARG TERRAFORM_IMAGE=hashicorp/terraform:${TERRAFORM_VERSION}

FROM ${TERRAFORM_IMAGE} AS terraform

FROM ${BUILD_IMAGE} AS build
ARG VENV=/opt/ephem
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY pipelines ./pipelines
RUN python3 -m venv "${VENV}" \
    && "${VENV}/bin/python" -m pip install --no-compile . \
    && "${VENV}/bin/ephem" --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PYTHON_IMAGE
ARG TERRAFORM_VERSION
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG VENV=/opt/ephem
LABEL org.opencontainers.image.title="ephem" \
      org.opencontainers.image.description="Ephemeral environments from Slack: infrastructure, code and data in one command." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      io.ephem.terraform.version="${TERRAFORM_VERSION}"

# One unprivileged user; the chart's podSecurityContext runs as the same ids.
RUN groupadd --system --gid 10001 ephem \
    && useradd --system --uid 10001 --gid ephem --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin ephem

COPY --from=terraform /bin/terraform /usr/local/bin/terraform
# The pinned version or no image: a different binary behind the same tag fails the build.
RUN terraform version | sed -n 1p | grep -xF "Terraform v${TERRAFORM_VERSION}"

COPY --from=build ${VENV} ${VENV}

# Everything Ephem and terraform write goes under /tmp (an emptyDir in the chart): HOME for
# terraform's CLI config and plugin cache, TMPDIR for temporary files, and the per-environment
# working directories, which default under the state directory of HOME.
ENV PATH="${VENV}/bin:${PATH}" \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_STATE_HOME=/tmp/state \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_IN_AUTOMATION=1

USER 10001:10001
WORKDIR /tmp
EXPOSE 3000
ENTRYPOINT ["ephem"]
CMD ["serve"]
