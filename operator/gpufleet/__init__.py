"""gpufleet: a Kubernetes operator for fleets of GPU Celery workers."""
