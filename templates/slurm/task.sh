# One task per node (srun --ntasks-per-node=1): write the job spec, then run the steps of the phase.
# Arguments: JOB CONTAINER_PREFIX RUNNER(docker|none) NPUS JOB_DIR JOB_SPEC_JSON, then per step
# STEP PHASE N followed by its N arguments (docker: options, image and command; none: the
# environment as K=V, then the command). Everything node-specific comes from Slurm here.
set -u
job=$1 prefix=$2 runner=$3 npus=$4 job_dir=$5 spec=$6
shift 6
node=$(hostname)
rank=${SLURM_NODEID:?not inside a Slurm step}
mkdir -p "$job_dir" && printf "%s\n" "$spec" > "$job_dir/job.json.tmp" && mv -f "$job_dir/job.json.tmp" "$job_dir/job.json" \
  || { echo "q7x2: cannot write the job spec to $job_dir on $node" >&2; exit 1; }
# The NPUs of the allocation of this step: SLURM_STEP_GPUS holds the physical indexes when the site
# declares NPUs as GPUs of Type=npu; a GRES Slurm only counts gives none, and the exclusive node has its
# NPUs 0..N-1 used.
devices=()
if [ "$npus" -gt 0 ]; then
  if [ -n "${SLURM_STEP_GPUS:-}" ]; then ids=${SLURM_STEP_GPUS//,/ }; else ids=$(seq 0 $((npus - 1))); fi
  for i in $ids; do devices+=(--device "/dev/davinci$i"); done
fi
while [ "$#" -gt 0 ]; do
  step=$1 phase=$2 n=$3
  shift 3
  args=("${@:1:$n}")
  shift "$n"
  echo "q7x2: $phase: $step starts on $node (node rank $rank, Slurm job ${SLURM_JOB_ID:-?})"
  if [ "$runner" = docker ]; then
    # Slurm does not track containers: drop any this job left on the node, label and name the
    # new one with the Slurm job id so `down` finds it, --rm so a finished step leaves nothing.
    stale=$(docker ps -aq --filter "label=q7x2.job=$job")
    if [ -n "$stale" ]; then docker rm -f $stale > /dev/null; fi
    docker run --rm --name "$prefix-$job-$step-$rank" \
      --label "q7x2.job=$job" --label "q7x2.phase=$phase" --label "q7x2.step=$step" \
      --label "q7x2.host=$node" --label "q7x2.rank=$rank" --label "q7x2.slurm.job=${SLURM_JOB_ID:-}" \
      -e "NODE_RANK=$rank" -e "MASTER_ADDR=$MASTER_ADDR" "${devices[@]}" "${args[@]}"
  else
    env "NODE_RANK=$rank" "MASTER_ADDR=$MASTER_ADDR" "${args[@]}"
  fi
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "q7x2: $phase: $step failed on $node (node rank $rank): exit status $rc" >&2
    exit "$rc"
  fi
done
