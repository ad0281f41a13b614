"""Make the engine test stand-ins (``engine_toys``) importable from tests and worker scripts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
