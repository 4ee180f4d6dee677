# The worker image of the kind e2e session: gpufleet's worker with the suite's Celery app (e2e_app.py) added,
# as a user adds their own tasks. Built by tests/e2e/providers.py with tests/e2e as the context.
ARG WORKER_IMAGE=gpufleet-worker:dev-cpu
FROM ${WORKER_IMAGE}
# /opt/gpufleet is on the image's Python path.
COPY e2e_app.py /opt/gpufleet/
