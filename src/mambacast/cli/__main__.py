"""`python -m mambacast.cli ...`, the same as the `mambacast` command."""

import sys

from . import main

sys.exit(main())
