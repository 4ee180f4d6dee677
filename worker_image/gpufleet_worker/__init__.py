"""gpufleet_worker: the Celery worker that runs inside every gpufleet worker pod."""
