"""Latency-aware search costs, one module per job.

- :mod:`strkit.nas.latency.table`: the measured lookup table (one time per candidate op and shape).
- :mod:`strkit.nas.latency.cost`: the expected cost of a supernet (latency, params, FLOPs) and the cost losses.
- :mod:`strkit.nas.latency.validation`: the table's predictions against whole-architecture timings.

Importing this package does no work.
"""
