"""hepascope.train: PyTorch models, datasets, training, evaluation, export (the ONNX graphs
and, beside them, the ``torch.export`` programs the torch backend runs: ``programs.py``)
and engine building (``engine_build``: INT8 quantisation, calibration, the TensorRT build);
the only room that imports torch at module level. Imports ``core``, ``phantom``,
``engines`` and ``stream`` (its readers and the pipeline the demo runs); none of them
imports this package."""
