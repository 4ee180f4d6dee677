# Debian's redis-server and curl: in a kind cluster without a registry, it stands in for the chart's Redis image
# and for its `helm test` image (which needs sh and curl). Built by tests/e2e/providers.py, FROM the Debian base
# of hack/base-images.sh.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# Debian's versions move with its security updates; pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server curl ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# The chart runs redis-server with no config file: it keeps its files in the working directory (an emptyDir).
WORKDIR /data
