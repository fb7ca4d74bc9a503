#!/usr/bin/env bash
# Run the test suite on a fresh machine: Debian packages and the root Docker engine
# (scripts/install-host-deps.sh, as root), the project's venv, lint and type checks, then
# pytest in two tiers: the fast tier (no sandbox, nothing slow) first, and only when it passes
# the rest (the sandbox and slow tests). Either tier collecting no tests is a failure.
# Extra arguments go to both pytest tiers (e.g. scripts/test.sh tests/foundation -x); then a
# tier that has no test among those paths is skipped, and only both being empty fails.
# Q7X2_FAST_ONLY=1 stops after the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  bash scripts/install-host-deps.sh
else
  echo "test.sh: not root: the sandbox tests (real sshd + Docker hosts) will be skipped" >&2
fi
bash scripts/setup-venv.sh

echo "test.sh: ruff" >&2
.venv/bin/python -m ruff check .
echo "test.sh: mypy" >&2
.venv/bin/python -m mypy

tier() {  # tier NAME MARKEXPR [pytest args...]
  local name=$1 expr=$2 rc started
  shift 2
  echo "test.sh: $name tier (-m \"$expr\")" >&2
  started=$SECONDS
  set +e
  # --durations: the slowest tests are printed, so the next one to mark `long` is known when CI
  # nears its hour.
  .venv/bin/python -m pytest -p no:cacheprovider --durations=15 -m "$expr" "$@"
  rc=$?
  set -e
  echo "test.sh: $name tier: exit $rc after $((SECONDS - started)) s" >&2
  if [ "$rc" = 5 ]; then
    if [ "$#" -gt 0 ]; then
      echo "test.sh: the $name tier has no test among the given paths" >&2
      empty=$((empty + 1))
      return 0
    fi
    echo "test.sh: the $name tier collected no tests: that is a failure" >&2
    return 1
  fi
  return "$rc"
}

empty=0
rc=0
tier fast "not sandbox and not slow" "$@" || rc=$?
if [ "$rc" != 0 ]; then
  echo "test.sh: the fast tier failed (exit $rc): the sandbox and slow tests are not run" >&2
  exit "$rc"
fi
if [ "${Q7X2_FAST_ONLY:-}" = 1 ]; then
  tiers=1
else
  tiers=2
  tier full "sandbox or slow" "$@" || rc=$?
fi
if [ "$empty" = "$tiers" ]; then
  echo "test.sh: no test ran: that is a failure" >&2
  exit 1
fi
exit "$rc"
