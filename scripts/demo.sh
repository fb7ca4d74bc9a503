#!/usr/bin/env bash
# The main job on one machine: a 2-host sandbox cluster, the cpu image built offline and pushed
# to the sandbox's registry, then `up` (convert + preprocess on rank 0, 2-node pretraining of
# the sample Qwen2.5 model) and a summary. Run as root from the repository; see README.
#   scripts/demo.sh            # leaves the sandbox up; `q7x2-deploy sandbox down` removes it
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh machine: Debian packages and the root Docker engine, then the project's venv.
if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: the sandbox needs root (network namespaces, Docker engines); run it as root" >&2
  exit 1
fi
bash scripts/install-host-deps.sh
bash scripts/setup-venv.sh

if [ -n "${Q7X2_DEPLOY:-}" ]; then Q=$Q7X2_DEPLOY
elif [ -x .venv/bin/q7x2-deploy ]; then Q=.venv/bin/q7x2-deploy
else Q=q7x2-deploy; fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
INV=${INVENTORY:-inventory.sandbox.yaml}

stamp() { date +%s; }
t0=$(stamp)
echo "== sandbox: 2 hosts"
# A new sandbox every time: hosts left by an earlier demo still hold its finished job and its
# checkpoints, so `up` would have nothing to train.
"$Q" sandbox down
"$Q" sandbox up 2 --inventory "$INV"
t1=$(stamp)
echo "== build-image (cpu, offline wheelhouse) and push to the sandbox registry"
"$Q" build-image "$INV" --push
t2=$(stamp)
echo "== check"
"$Q" check "$INV"
echo "== up"
"$Q" up "$INV"
t3=$(stamp)
echo "== status"
"$Q" status "$INV"

JOB=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["job"]["name"])' "$INV")
echo "== summary"
"$PY" - "$JOB" <<'PY'
import sys
from pathlib import Path
from q7x2_deploy.executor.metrics import losses
job = sys.argv[1]
runs = Path(".q7x2/runs") / job
curve = []
for log in sorted(runs.glob("*.log")):
    curve += losses(log.read_text(errors="replace").splitlines())
if curve:
    print(f"job {job}: {len(curve)} iterations logged, lm loss {curve[0][1]:.4f} -> {curve[-1][1]:.4f}")
print(f"host logs: {', '.join(str(p) for p in sorted(runs.glob('*.log')))}")
if not curve:
    sys.exit(f"demo.sh: job {job} logged no iteration lines in {runs}: the job did not train")
PY
echo "sandbox up $((t1 - t0))s, image $((t2 - t1))s, check+up $((t3 - t2))s, total $((t3 - t0))s"
echo "next: $Q logs $INV | less;  $Q down $INV;  $Q sandbox down"
