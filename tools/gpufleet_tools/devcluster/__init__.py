"""A local Kubernetes control plane with simulated GPU nodes, for the e2e tests and the demo."""
