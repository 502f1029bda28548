"""hepascope.train: PyTorch models, training, evaluation and export. Imports ``stream`` and
``engines``; ``stream`` never imports this package (an inference box needs no torch), and
``engines`` only inside the functions that need it (the torch backend rebuilds a graph's
module; calibration reads training data through its readers)."""
