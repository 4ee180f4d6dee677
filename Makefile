# The two commands at the top of the README. Both work on a fresh machine: they bootstrap what they need.
.PHONY: demo test lint unit e2e e2e-kind chaos bootstrap images gpu-check dev-cluster-up dev-cluster-down

bootstrap:
	hack/bootstrap.sh

# A local control plane with simulated GPU nodes, the operator, Redis and a burst of real tasks. It needs no
# Docker engine, so it installs none.
demo:
	GPUFLEET_SKIP_DOCKER=1 hack/bootstrap.sh
	.venv/bin/gpufleet demo

# Everything CI runs: lint, the images, the tests that need no cluster (four at a time: unit and integration
# tests on a real redis-server, the images run on the Docker engine), e2e on the real control plane, the faults
# (make chaos), and the e2e suite again on kind. The Go builds (control plane, kind) run in the background
# meanwhile. hack/test.sh times each phase and ends with a table of them; its exit status is the first failing
# phase's.
test:
	hack/test.sh

# gpufleet-operator:dev, gpufleet-worker:dev-cpu and gpufleet-worker:dev-cuda on the local Docker engine, from a
# base made here (no registry needed); prints each image's size.
images: bootstrap
	hack/images.sh

# On a machine with an NVIDIA GPU and driver: the CUDA image's pinned stack in a fresh venv, the gpu tests, the
# GPU benchmark.
gpu-check:
	hack/gpu-check.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/hadolint worker_image/Dockerfile $(wildcard operator/Dockerfile) $(wildcard tests/e2e/images/*.Dockerfile) $(wildcard examples/*/Dockerfile)

# Every test that needs neither a cluster, nor a Go-built binary, nor a container engine, nor the package index:
# no Go build, no Docker; four at a time (most of them wait on real workers and Redis, not on the CPU), handed
# out one by one, the slow ones first (tests/conftest.py), so that the four end together.
unit:
	GPUFLEET_SKIP_K8S_BUILD=1 GPUFLEET_SKIP_DOCKER=1 hack/bootstrap.sh
	.venv/bin/python -m pytest -p no:cacheprovider -n 4 --maxschedchunk 1 -m "not cluster and not binaries and not images and not kind and not network"

e2e: bootstrap
	.venv/bin/python -m pytest -p no:cacheprovider -m "cluster and not chaos"

# Faults on a control plane of their own: the API server restarted, etcd paused, Redis blackholed and restarted
# with persistence, a burst of 100,000 tasks; each prints what the fleet did (about 7.5 minutes).
chaos: bootstrap
	.venv/bin/python -m pytest -p no:cacheprovider -m chaos -rA -s tests/e2e/test_faults.py

# The e2e suite on kind: real nodes (kubelet, containerd) running the images of `make images`. Without a registry
# the node image is built here first (hack/kind-node-image.sh); GPUFLEET_KIND_NODE_IMAGE=kind-default takes kind's
# public one instead. Tests that only make sense on the local control plane say so and skip.
e2e-kind: bootstrap images
	hack/bootstrap.sh kind
	GPUFLEET_E2E_PROVIDER=kind .venv/bin/python -m pytest -p no:cacheprovider -m cluster -rA tests/e2e

dev-cluster-up: bootstrap
	hack/dev-cluster.sh up

dev-cluster-down:
	hack/dev-cluster.sh down
