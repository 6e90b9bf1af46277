# A tuner image for workers and the dashboard (docker-compose.yml runs both).
#   docker build -t tuner .
# torch is the CUDA build from PyPI (it ships its own CUDA libraries): the host needs only the
# NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# the same pins as pyproject.toml (tests/test_docker.py checks they agree)
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY search_spaces ./search_spaces
# gcc: Triton and Inductor build their kernels with a C compiler (`compile: true` in a
# study file); python:slim has none
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install "torch==2.14.1" . \
    && useradd --create-home --uid 1000 tuner \
    && mkdir -p /checkpoints /data \
    && chown tuner:tuner /checkpoints /data

# shared volumes in docker-compose.yml: every worker must see every checkpoint
ENV TUNER_CHECKPOINT_DIR=/checkpoints \
    TUNER_DATA_DIR=/data
USER tuner
WORKDIR /home/tuner
CMD ["tuner", "--help"]
