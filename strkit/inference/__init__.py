"""Inference outside the training code: exported-model metadata and the PyTorch / ONNX Runtime backends.

- :mod:`strkit.inference.metadata`: what an exported model carries so it can be preprocessed and
  decoded without its checkpoint (charset, codec, input geometry, normalisation).
- :mod:`strkit.inference.torch_backend`: a :class:`~strkit.models.recognizer.RecognitionModel` run with
  inference mode (optionally channels-last).
- :mod:`strkit.inference.onnx_backend`: an exported ``.onnx`` file run with ONNX Runtime.
- :mod:`strkit.inference.images`: image loading and the fixed preprocessing (resize, pad, normalise).
- :mod:`strkit.inference.onnx_cache`: where a checkpoint's ONNX export is kept and when it is reused.
- :mod:`strkit.inference.teachers`: the teachers of distillation and curation.

Both backends follow :class:`strkit.inference.backend.InferenceBackend`; :class:`strkit.api.Recognizer`
drives either. Importing this package does no work.
"""
