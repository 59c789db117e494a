#!/bin/sh
# The stand-in broker's start (tests/containers/rabbitmq.Dockerfile), what
# the official image does that the compose stack relies on: the user from
# RABBITMQ_DEFAULT_USER/PASS, then the server in the foreground as the
# rabbitmq user, as PID 1's exec so that `docker stop` reaches it.
set -eu
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
  printf 'default_user = %s\ndefault_pass = %s\n' "$RABBITMQ_DEFAULT_USER" \
    "${RABBITMQ_DEFAULT_PASS:-}" > /etc/rabbitmq/conf.d/05-default-user.conf
fi
# A new named volume over /var/lib/rabbitmq may come up owned by root.
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
if [ "${1:-}" = rabbitmq-server ]; then
  shift
  set -- /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq "$@"
