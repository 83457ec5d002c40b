# syntax=docker/dockerfile:1
# Images for the scale-out stack in docker-compose.yml: `worker` (the default target) runs
# `python -m bench.run`; `mlflow` is the tracking server, `dashboard` is optuna-dashboard.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Every service runs as this unprivileged user, never as root.
RUN useradd --create-home --uid 10001 vaebench

# --- MLflow tracking server: mlflow 3.x with its basic-auth app (the `auth` extra) and the
# PostgreSQL driver for its backend and auth stores. Also runs the one-shot mlflow-worker-user job.
FROM base AS mlflow
# The flags in docker-compose.yml (--app-name, --allowed-hosts, --serve-artifacts, ...) were
# checked against this release; change both together.
ARG MLFLOW_VERSION=3.17.2
RUN pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg[binary]>=3.1"
# A new named volume takes the owner of the directory it is mounted over, so the
# unprivileged server can write served artifacts there.
RUN mkdir /mlartifacts && chown vaebench:vaebench /mlartifacts
USER vaebench
WORKDIR /home/vaebench
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# --- optuna-dashboard on the Optuna database (compose profile `dashboard`).
FROM base AS dashboard
ARG OPTUNA_DASHBOARD_VERSION=0.21.0
RUN pip install "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" "optuna>=4.5" "psycopg[binary]>=3.1"
USER vaebench
WORKDIR /home/vaebench
EXPOSE 8080
CMD ["optuna-dashboard", "--host", "0.0.0.0", "--port", "8080"]

# --- worker: the project with a CPU build of PyTorch. Last stage, so the default target.
FROM base AS worker
# CPU wheels first: `pip install .` then finds torch satisfied instead of pulling the
# CUDA build from PyPI (several GB). Point it at a CUDA index for GPU hosts.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4" "torchvision>=0.19"
WORKDIR /app
# .dockerignore lets only the package sources, studies and build metadata in.
COPY . .
# The worker may write caches under its working directory, so it owns it.
RUN pip install . && rm -rf build ./*.egg-info && chown -R vaebench:vaebench /app
USER vaebench
# The dataset is mounted here read-only by docker-compose.yml; it is never baked in.
ENV VAE_DATA_DIR=/data
CMD ["python", "-m", "bench.run", "--help"]
