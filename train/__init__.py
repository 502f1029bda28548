"""hepascope.train: PyTorch models, datasets, training, evaluation, export, the module the
torch backend runs (``torch_module``) and engine building (``engine_build``: INT8
quantisation, calibration, the TensorRT build); the only room that imports torch at module
level. Imports ``core``, ``phantom``, ``engines`` and ``stream`` (its readers and the
pipeline the demo runs); none of them imports this package, except the torch backend,
which gets its module from ``torch_module`` when a torch engine is built."""
