"""Sample leads for the local stack and the benchmarks."""
