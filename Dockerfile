# edgewatch image: the flows, `edgewatch replay` and the CLI on a slim Python, non-root.
#   docker build -t edgewatch:local .
# Stage 1 builds a virtual environment; stage 2 copies it alone into a clean slim image.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dataflows dataflows
COPY operators operators
COPY sources sources
COPY sinks sinks
COPY models models
RUN /opt/venv/bin/pip install --no-compile . \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="edgewatch" \
      org.opencontainers.image.description="Streaming anomaly detection for IoT sensor fleets" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 edgewatch \
 && useradd --system --uid 10001 --gid edgewatch --home-dir /state --create-home \
      --shell /usr/sbin/nologin edgewatch
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGEWATCH_METRICS_ADDR=:9464
WORKDIR /state
USER 10001:10001
EXPOSE 9464
# Healthy while the flow serves its metrics (the replayer disables this check).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=2)"]
# Bytewax stops cleanly on SIGINT (compose: stop_signal SIGINT, init true).
STOPSIGNAL SIGINT
CMD ["python", "-m", "bytewax.run", "dataflows.air_quality:flow", "-s", "1"]
