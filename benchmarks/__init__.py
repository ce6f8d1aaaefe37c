"""pengster's benchmarks (not part of the installed package): accuracy against peers and baselines."""
