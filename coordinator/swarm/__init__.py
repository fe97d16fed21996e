"""The tabs as a pool: the cluster (the one writer of a worker's state), the planner and
placement (capacity, allocation), the worker link and its step timing, the lifecycle table,
the pipeline type and the headless tabs `tabswarm serve` opens.
"""
