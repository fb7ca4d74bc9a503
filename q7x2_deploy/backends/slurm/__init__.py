"""The Slurm backend: the job as one sbatch script (script.py), submitted and followed on the
login host over the SSH transport (job.py)."""
