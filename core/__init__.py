"""The foundation every room may use: typed errors, ``Frame``, geometry, the config, the one
preprocessing function, the result-message schema and the export format (file names,
metadata keys, roles). Imports only the standard library, numpy, OpenCV, msgspec, msgpack
and PyYAML."""
