"""pengster's benchmarks (not part of the installed package): accuracy against peers and baselines."""

import os

# The benchmarks run single-threaded. numba (scanpy's neighbours, in the scores) otherwise starts an OpenMP worker
# per core that keeps spinning between its parallel regions and took about half a core from the training that
# followed (seen on 2 cores: a 100-epoch fit 2-4x slower after the first scoring). Only effective before numba loads.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
