"""``python -m meanfield``: the ``meanfield`` command."""

import sys

from meanfield.run.cli import main

sys.exit(main())
