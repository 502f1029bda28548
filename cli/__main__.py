"""``python -m hepascope.cli`` is the ``hepascope`` command."""

import sys

from hepascope.cli import main

sys.exit(main())
