# crbatch training image: crbatch, Keras 3 and TensorFlow (CPU by default, CUDA with VARIANT=gpu),
# the thin batch entry points (jobs/) and, by default, the synthetic-input generator (PyROOT) and the
# ONNX export.
#
#   DOCKER_BUILDKIT=1 docker build -t crbatch:latest .                          # CPU
#   DOCKER_BUILDKIT=1 docker build --build-arg VARIANT=gpu -t crbatch:gpu .     # TensorFlow with CUDA
#   docker run --rm -v "$PWD:/data" crbatch:latest demo
#
# BuildKit is required (pip cache mount). Build arguments:
#   BASE_IMAGE  a Debian-based Python 3.11 image (python:3.11-slim; CI passes a local one)
#   VARIANT     cpu: tensorflow-cpu (the `train` extra) | gpu: tensorflow[and-cuda], same pinned version
#   EXTRAS      further crbatch extras, comma-separated (default synth,export: `crbatch synth`/`demo` and
#               the ONNX export work in the image; EXTRAS=export gives a slimmer production image)
#   VERSION, VCS_REF, SOURCE_URL   OCI labels (docs/containers.md shows how to fill them from git)
# Everything is documented in docs/containers.md.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG EXTRAS=synth,export
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1
RUN python3 -m venv /opt/crbatch/venv
ENV PATH=/opt/crbatch/venv/bin:${PATH}
WORKDIR /src

# Dependencies first, from pyproject.toml and a stub package: this (large) layer stays cached while
# only crbatch's code changes. Versions are pinned in pyproject.toml (hence DL3013 off); the pip cache
# lives in a BuildKit cache mount, never in a layer.
# VARIANT=gpu installs the CUDA build of the TensorFlow version pyproject.toml pins for the CPU (the
# `train` extra), so there is one pin for both variants.
COPY pyproject.toml README.md ./
COPY crbatch/__init__.py crbatch/__init__.py
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    case "${VARIANT}" in \
      cpu) set -- "/src[train${EXTRAS:+,${EXTRAS}}]" ;; \
      gpu) tf=$(sed -n 's/.*"tensorflow-cpu\(==[^"]*\)".*/tensorflow[and-cuda]\1/p' pyproject.toml); \
           keras=$(sed -n 's/.*"\(keras[<>=!~][^"]*\)".*/\1/p' pyproject.toml | head -n 1); \
           if [ -z "${tf}" ] || [ -z "${keras}" ]; then echo "no tensorflow-cpu/keras pin in pyproject.toml" >&2; exit 1; fi; \
           set -- "/src${EXTRAS:+[${EXTRAS}]}" "${tf}" "${keras}" ;; \
      *) echo "VARIANT must be cpu or gpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac; \
    pip install "$@"

# Now the code itself, without touching the dependencies installed above.
COPY . /src/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --no-deps --force-reinstall /src \
    && pip check \
    && mkdir -p /src/jobs /opt/crbatch/jobs \
    && cp -r /src/jobs/. /opt/crbatch/jobs/ \
    && find /opt/crbatch/jobs -type f -name '*.sh' -exec chmod 0755 {} +

# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ARG VARIANT=cpu
ARG VERSION=unknown
ARG VCS_REF=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="crbatch" \
      org.opencontainers.image.description="Batch training of the ATLAS CalRatio per-jet classifier (convert, build, train, analyze, export); TensorFlow ${VARIANT}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ch.cern.crbatch.variant="${VARIANT}"

# A fixed non-root user for plain `docker run`. The image also works under any other UID
# (`docker run --user "$(id -u):$(id -g)"`, Apptainer): nothing below needs a writable home, and
# matplotlib/Keras get their config directories in /tmp.
ARG EXTRAS=synth,export
# PyROOT (synth extra) compiles C++ with its interpreter, cling, which needs a C++ compiler and the C++
# standard headers at run time. Debian packages are not version-pinned (DL3008): the stable suite's
# security updates replace exact revisions, and the base image fixes the suite.
# hadolint ignore=DL3008
RUN case ",${EXTRAS}," in \
      *,synth,*) apt-get update \
                 && apt-get install -y --no-install-recommends g++ \
                 && apt-get clean \
                 && rm -rf /var/lib/apt/lists/* ;; \
    esac
RUN groupadd --gid 1000 crbatch \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash crbatch \
    && mkdir -p /data \
    && chown crbatch:crbatch /data
COPY --from=build /opt/crbatch /opt/crbatch

# TF_CPP_MIN_LOG_LEVEL=1: TensorFlow's INFO lines (oneDNN, CPU features) drown batch logs; warnings stay.
ENV PATH=/opt/crbatch/venv/bin:${PATH} \
    CRBATCH_JOBS=/opt/crbatch/jobs \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERAS_BACKEND=tensorflow \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/.matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1

USER 1000:1000
WORKDIR /data
ENTRYPOINT ["crbatch"]
CMD ["--help"]
