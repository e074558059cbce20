"""`python -m leadflow` is the `leadflow` command."""

import sys

from leadflow.cli import main

sys.exit(main())
