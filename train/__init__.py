"""hepascope.train: PyTorch models, training, evaluation and export. Imports ``stream`` and
``engines``; they never import this package (an inference box needs no torch)."""
