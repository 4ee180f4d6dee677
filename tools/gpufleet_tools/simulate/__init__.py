"""`gpufleet simulate`: a discrete-event simulation of a GPU worker fleet, run on one task trace under the
operator's real scaling policy, a model of KEDA's Redis scaler driving an HPA, and a static fleet.

traces (the work) -> engine (broker, pods, clock) <- policies (who sets the replicas) -> metrics -> report
"""
