#!/bin/bash
# Container entrypoint: the CANN toolkit's environment (when the image has one), then the command.
# Sourcing happens here once so that `docker exec` sessions and every step see the same environment.
set -e
for f in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnal/atb/set_env.sh; do
  # shellcheck disable=SC1090
  [ -f "$f" ] && . "$f"
done
exec "$@"
