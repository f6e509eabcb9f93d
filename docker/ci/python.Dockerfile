# Test-only stand-in for python:3.11-slim-bookworm (scripts/docker-base-images.sh), for hosts
# that cannot pull from Docker Hub: Debian's Python 3.11 with venv, `python` on PATH.
ARG BASE=retinanet-ci/bookworm:minbase
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 \
    && rm -rf /var/lib/apt/lists/*
CMD ["python"]
