"""The fault drill: a load with a ledger, one fault at a time against real leadflow
processes and a broker of its own, and a reconciliation with what ClickHouse holds.

`tests/reliability/test_chaos.py` runs it (the short drill in `make test`, every
fault in `make chaos`); docs/reliability.md has what each fault does and found.
"""

from leadflow_tools.drill.faults import Drill, table

__all__ = ["Drill", "table"]
