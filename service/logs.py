"""How the service's processes log: one line per record on stderr."""

from __future__ import annotations

import logging
import os
import sys


def configure_logging() -> None:
    """Log lines to stderr at ``RETINANET_LOG_LEVEL`` (default INFO)."""
    level = os.environ.get("RETINANET_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
