"""Integration tests against a real one-node SLURM cluster (make test-cluster)."""
