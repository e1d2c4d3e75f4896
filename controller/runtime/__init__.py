"""The runtime: Docker Swarm through the docker SDK, and the CLI for `docker stack deploy`."""
