# ocrbatch: the worker and its HTTP API (`ocrbatch serve`), as a non-root container.
# Build: docker build -t ocrbatch .   Run: docker run -e OCRBATCH_CONFIG=/config/ocrbatch.toml ...
# Local OCR engine: docker run -p 8080:8080 -e OCRBATCH_ENGINE_SECRET=... --entrypoint ocrbatch ocrbatch engine --host 0.0.0.0 --port 8080

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ocrbatch ./ocrbatch
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# The local OCR engine (`ocrbatch engine`, same image, entrypoint overridden): Tesseract with Korean
# (with the Hangul script model), Japanese, Traditional Chinese and English data.
# Not pinned: Debian's stable packages follow the base image's release and get only security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        tesseract-ocr tesseract-ocr-eng tesseract-ocr-kor tesseract-ocr-script-hang \
        tesseract-ocr-jpn tesseract-ocr-chi-tra \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ocrbatch
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/ocrbatch
# The API listens on every interface inside the container; set OCRBATCH_API__TOKEN(_FILE) too,
# or serve refuses to start on a non-loopback address.
ENV PYTHONUNBUFFERED=1 \
    OCRBATCH_API__HOST=0.0.0.0 \
    OCRBATCH_API__PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('OCRBATCH_API__PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["ocrbatch", "serve"]
