# lbdn-service: one image for the API and the workers.
#   CPU (default):  docker build -t lbdn-service:cpu .
#   CUDA:           docker build -t lbdn-service:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 .
# The CUDA wheels bring their own CUDA runtime; the host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit (docker-compose.yml reserves the GPU for the worker).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LBDN_HOME=/var/lib/lbdn \
    LBDN_DATA_DIR=/data

WORKDIR /app
# torch first, from the index that picks CPU or CUDA, so the project's `torch>=2.2` is already met
# and this large layer stays cached while the code changes.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY lipcore ./lipcore
COPY core ./core
COPY worker ./worker
COPY api ./api
RUN pip install ".[service,attack]"

RUN useradd --create-home --uid 10001 lbdn \
    && mkdir -p /var/lib/lbdn /data \
    && chown lbdn:lbdn /var/lib/lbdn /data
USER lbdn
VOLUME ["/var/lib/lbdn"]
EXPOSE 8000

# The API refuses a non-loopback address until an API key exists:
#   docker compose run --rm api lbdn keys create --tenant NAME
CMD ["lbdn", "api", "--host", "0.0.0.0", "--port", "8000"]
