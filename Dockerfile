FROM python:3.11-slim

# Non-root user; /data holds the embedded SQLite database by default.
RUN useradd --create-home --uid 10001 asyncgate \
    && mkdir /data && chown asyncgate:asyncgate /data
WORKDIR /app

COPY pyproject.toml README.md openapi.yaml ./
COPY asyncgate asyncgate
COPY plugins plugins
COPY schema schema
COPY migrations migrations
# Editable install: schema/, migrations/ and openapi.yaml are read from /app at run time.
RUN pip install --no-cache-dir -e . && chown -R asyncgate:asyncgate /app

USER asyncgate
ENV ASYNCGATE_DATABASE_URL=sqlite:////data/asyncgate.db \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8080

# Uses the image's own Python: no curl or wget needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/v1/health', timeout=4).status == 200 else 1)"

CMD ["uvicorn", "asyncgate.main:app", "--host", "0.0.0.0", "--port", "8080", "--proxy-headers", \
     "--http", "asyncgate.http_protocol:HttpToolsJoinedWrites"]
