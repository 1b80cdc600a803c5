# UrbanSense app image (worker, bridge, simulator); see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first so code edits reuse the cached layer.
COPY pyproject.toml README.md ./
COPY streams/ streams/
COPY connectors/ connectors/
COPY models/ models/
COPY alerting/ alerting/
COPY simulators/ simulators/
# Editable install: model artifacts under models/artifacts/ are not package data, so the code
# must run from this source tree.
RUN pip install -e . \
    && useradd --create-home --uid 10001 urban \
    && mkdir -p /app/var \
    && chown -R urban:urban /app/var

USER urban
EXPOSE 6066
CMD ["urbansense", "--help"]
