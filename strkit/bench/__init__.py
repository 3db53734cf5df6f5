"""Every speed and side-by-side comparison tool behind ``tools/bench.py``; nothing else imports it.

- :mod:`strkit.bench.common`: model configs by name, peak memory, machine load, one process per case.
- :mod:`strkit.bench.train_speed`: training throughput on the trainer's own step.
- :mod:`strkit.bench.infer_speed`: inference latency and throughput (PyTorch or ONNX Runtime).
- :mod:`strkit.bench.timing`: batch-1 latency and batched throughput of any callable backend.
- :mod:`strkit.bench.data_loading`: data-loading throughput from an LMDB to batch tensors.
- :mod:`strkit.bench.readers`: the readers compared side by side (strkit models, RapidOCR).

Importing this package does no work.
"""
