"""``python -m cvkit`` runs the command line."""

import sys

from cvkit.cli import main

sys.exit(main())
