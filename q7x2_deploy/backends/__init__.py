"""Where jobs run besides the SSH fan-out: one package per scheduler (slurm/, kubernetes/)."""
