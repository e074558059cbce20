"""The Faust app and its steps: one module per step, a pure function plus a thin agent."""
