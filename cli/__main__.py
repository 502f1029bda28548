"""``python -m hepascope.stream`` is the ``hepascope`` command."""

import sys

from hepascope.stream.cli import main

sys.exit(main())
