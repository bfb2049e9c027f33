"""`python -m demo` is `python -m demo.server`."""

from __future__ import annotations

import sys

from demo.server import main

if __name__ == "__main__":
    sys.exit(main())
