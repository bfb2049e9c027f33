"""The process environment: the only wsnode module that reads os.environ.

A setting's variable is named by its NodeSettings field (wsnode.settings); what is not a setting is named here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

LOG_LEVEL = "WSNODE_LOG_LEVEL"


def current() -> Mapping[str, str]:
    """The process's environment."""
    return os.environ


def log_level(env: Mapping[str, str]) -> str:
    """The logging level of `python -m wsnode`."""
    return env.get(LOG_LEVEL, "INFO")
