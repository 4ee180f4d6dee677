"""The shop's own Celery tasks, run on a gpufleet fleet."""
