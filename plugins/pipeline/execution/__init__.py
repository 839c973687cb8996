"""How a step runs: the job operator factory, its local, Docker and Kubernetes operators, runners."""
