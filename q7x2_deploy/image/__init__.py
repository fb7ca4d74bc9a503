"""The job image: offline wheelhouse, Dockerfile rendering, build, push, delivery to hosts."""
