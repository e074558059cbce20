# The leadflow image: one image, the role chosen by the command (worker / serve).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LEADFLOW_DATA_DIR=/var/lib/leadflow
WORKDIR /app
COPY pyproject.toml README.md ./
COPY leadflow ./leadflow
COPY schemas ./schemas
COPY streams ./streams
COPY sinks ./sinks
COPY ingest_adapters ./ingest_adapters
COPY privacy ./privacy
COPY leadflow_app ./leadflow_app
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/leadflow leadflow \
    && mkdir -p /var/lib/leadflow && chown leadflow /var/lib/leadflow
USER leadflow
ENTRYPOINT ["leadflow"]
CMD ["serve"]
