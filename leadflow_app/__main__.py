"""`python -m leadflow_app` is the `leadflow` command."""

import sys

from leadflow_app.cli import main

sys.exit(main())
