#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: Debian packages and the root Docker engine
# (scripts/install-host-deps.sh, as root), the project's venv, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/foundation -x).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash scripts/install-host-deps.sh
else
  echo "test.sh: not root: the sandbox tests (real sshd + Docker hosts) will be skipped" >&2
fi
bash scripts/setup-venv.sh
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
