"""Backends: where and how a job's containers run.

`container_runtime.ContainerRuntime` is the interface the SSH executor drives on each host
(start a step, wait for it, follow its output, list, stop and remove the job's containers, make
the image present); `docker_cli.DockerCLI` implements it with the Docker CLI over a host's
Transport. Schedulers that own the whole job have a package each (slurm/, kubernetes/).
"""
