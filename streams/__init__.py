"""The Faust app and its stages: one module per stage, a pure function plus a thin agent."""
