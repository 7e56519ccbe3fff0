#!/bin/sh
# web (default): apply migrations, then serve with gunicorn (static files via whitenoise).
# worker: run a django-q2 cluster. Anything else is executed as given (e.g. a manage.py command).
set -eu
role="${1:-web}"
case "$role" in
  web)
    python manage.py migrate --noinput
    exec gunicorn flowmanager.wsgi --bind "0.0.0.0:${PORT:-8000}" \
      --workers "${WEB_CONCURRENCY:-2}" --access-logfile - --forwarded-allow-ips '*' \
      --no-control-socket
    ;;
  worker)
    exec python manage.py qcluster
    ;;
  *)
    exec "$@"
    ;;
esac
