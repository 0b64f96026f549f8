# The inference server as a container: `bigtransfer serve` of the model mounted at /models.
#   docker build -t bigtransfer-serve .
#   docker run --rm -p 8000:8000 -p 8001:8001 -v "$PWD/runs/cats/model:/models:ro" --stop-timeout 45 bigtransfer-serve
# (--stop-timeout: SIGTERM lets the requests under way finish, up to --timeout 30 s; Docker's default is 10 s.)
# torch is the CPU build, and every package is at the version of scripts/constraints.txt, which the test suite
# last passed with. deploy/kubernetes/ has a Deployment and a KServe InferenceService that run this image.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/bigtransfer
ENV PATH=/opt/bigtransfer/bin:$PATH
WORKDIR /src
COPY scripts/constraints.txt scripts/constraints.txt
# torch first, from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build, gigabytes larger); what it pulls
# in comes from PyPI at the pinned versions, and the second install may not swap the build (torch.txt)
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -c scripts/constraints.txt torch==2.13.0+cpu \
    && echo "torch==2.13.0+cpu" > /tmp/torch.txt
COPY pyproject.toml README.md ./
COPY src src
RUN pip install -c scripts/constraints.txt -c /tmp/torch.txt ".[serve,grpc,onnx,otel]"

FROM python:3.11-slim
ENV PATH=/opt/bigtransfer/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/tmp/huggingface
COPY --from=build /opt/bigtransfer /opt/bigtransfer
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin bigtransfer && mkdir /models
USER 10001
# REST (KServe v2, /predict, the page, /metrics) and gRPC (KServe v2 / Triton's GRPCInferenceService)
EXPOSE 8000 8001
# the model loads before the port opens, then warms up (/v2/health/ready 503 meanwhile): --start-period covers it
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=2)"]
CMD ["bigtransfer", "serve", "/models", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "8001", "--timeout", "30"]
