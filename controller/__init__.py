"""ccci: a Git-backed GitOps controller that runs CI for Docker Swarm recipes."""

__version__ = "0.1.0"
