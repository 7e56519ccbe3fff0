# One image for both roles: the web server (default) and a worker (`worker` argument).
#   docker build -t flowmanager .
#   docker run -e SECRET_KEY=... -e DATABASE_URL=... -p 8000:8000 flowmanager          # web
#   docker run -e SECRET_KEY=... -e DATABASE_URL=... flowmanager worker               # worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000 \
    DATABASE_URL=sqlite:////app/data/db.sqlite3

RUN groupadd --system app && useradd --system --gid app --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app

# Dependencies first, so code changes reuse this layer.
COPY pyproject.toml README.md ./
RUN pip install .

COPY --chown=app:app . .
# collectstatic only reads settings; the key below signs nothing and never reaches a container.
RUN SECRET_KEY=collectstatic-build-step-only python manage.py collectstatic --noinput --verbosity 0 \
    && mkdir -p /app/data && chown app:app /app/data

USER app
# The default SQLite database lives here; mount a volume to keep it, or set DATABASE_URL.
VOLUME ["/app/data"]
EXPOSE 8000
# Exec form and no init that signals the process group: SIGTERM reaches gunicorn or the
# qcluster main process directly, which finishes the jobs in flight and exits.
ENTRYPOINT ["/app/docker-entrypoint.sh"]
CMD ["web"]
