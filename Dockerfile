# reftflow for a Prefect work pool's containers (Docker or Kubernetes): the package, its CLI and git, no project.
# The project is mounted at run time (README, "More than one machine"). Not built here: this machine has
# no Docker engine.
#
#   docker build -t reftflow:0.1.0 .
#   docker build -t reftflow:0.1.0 --build-arg EXTRAS=s3 .    # + dvc-s3, for a DVC remote on S3 (ssh: dvc-ssh)
#
# Run by a Docker or Kubernetes worker, the container's command is the worker's own (one flow run).
# Run by hand, it is a process worker (CMD), or the pipeline on a mounted project:
#
#   docker run -e PREFECT_API_URL=http://prefect.lan:4200/api -e MLFLOW_TRACKING_URI=http://tracking.lan:5000 \
#     -v /srv/reftflow/proj:/srv/reftflow/proj reftflow:0.1.0
#   docker run --rm -v /srv/reftflow/proj:/srv/reftflow/proj -e MLFLOW_TRACKING_URI=http://tracking.lan:5000 \
#     reftflow:0.1.0 reftflow run --project-dir /srv/reftflow/proj
FROM python:3.11-slim

# git: a project is a git repo (DVC experiments, the run record's commit and diff)
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# Nothing leaves the container unless the user asks (reftflow/env.py says what each one stops)
ENV DO_NOT_TRACK=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# The CPU build of torch first: the package's torch range would otherwise pull a multi-GB CUDA build.
# On a GPU node: --build-arg TORCH=torch==2.13.0 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "$TORCH"

# Then the package (its source only: .dockerignore keeps runs, stores and virtualenvs out)
ARG EXTRAS=
WORKDIR /opt/reftflow
COPY pyproject.toml README.md ./
COPY reftflow reftflow
COPY flows flows
COPY tasks tasks
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

# A flow run's process starts here; the project's path is the deployment's project_dir parameter.
# Left alone, the container is a process worker on the pool `reftflow` (PREFECT_API_URL must be set);
# a Docker or Kubernetes worker replaces this command with its own flow run's.
WORKDIR /srv/reftflow
CMD ["prefect", "worker", "start", "--pool", "reftflow"]
