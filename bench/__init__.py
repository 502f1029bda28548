"""hepascope.bench: benchmarks of the models, the engines and the live path (``hepascope
bench``, and the ``python -m hepascope.bench.*`` measurements behind the README's figures).
The top room but the CLI: it may import every other room."""
