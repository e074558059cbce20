"""`python -m leadflow` is the `leadflow` command, which the application shell holds;
run by name, so the core imports nothing of the shell."""

import runpy

runpy.run_module("leadflow_app", run_name="__main__", alter_sys=True)
