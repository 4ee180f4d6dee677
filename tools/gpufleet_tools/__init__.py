"""gpufleet's tools, apart from the operator's runtime: the demo, the simulator and the local dev cluster.

They install with the `dev` extra (`pip install 'gpufleet[dev]'`); the operator image carries none of their
dependencies, and `python -m gpufleet` imports none of this package.
"""
