#!/bin/sh
# As the official image: `redis-server ...` runs as user redis, with protected mode off, owning /data.
set -e
if [ "$1" = "redis-server" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
  if [ "$(id -u)" = "0" ]; then
    find . \! -user redis -exec chown redis:redis '{}' +
    exec setpriv --reuid redis --regid redis --init-groups "$@"
  fi
fi
exec "$@"
