"""LMDB datasets in the format every STR codebase shares: one module per job.

- :mod:`strkit.data.lmdb.format`: keys, record decoding (images, word geometry) and errors.
- :mod:`strkit.data.lmdb.reader`: :class:`~strkit.data.lmdb.reader.LmdbDataset` and the per-process
  cache of read-only environments.
- :mod:`strkit.data.lmdb.writer`: the streaming, resumable :class:`~strkit.data.lmdb.writer.LmdbWriter`.
- :mod:`strkit.data.lmdb.discovery`: every LMDB below a folder, opened as one dataset.

Importing this package does no work.
"""
