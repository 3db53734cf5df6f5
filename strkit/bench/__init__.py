"""Every speed and side-by-side comparison tool behind ``tools/bench.py``; nothing else imports it.

- :mod:`strkit.bench.infer_speed`: inference latency and throughput (PyTorch or ONNX Runtime).
- :mod:`strkit.bench.tables`: the markdown tables of training and inference speed.
- :mod:`strkit.bench.timing`: batch-1 latency and batched throughput of any callable backend.
- :mod:`strkit.bench.data_loading`: data-loading throughput from an LMDB to batch tensors.
- :mod:`strkit.bench.readers`: the readers compared side by side (strkit models, RapidOCR).

Training speed is timed on the trainer's own step by :mod:`strkit.engine.train_timing`, which the search
cost report uses too (so it sits in the engine, below this package). Importing this package does no work.
"""
