"""Suite-wide settings. The suite runs under pytest-xdist (`make test` uses `-n 2`), one worker
per core, so each worker keeps torch and faiss to one thread: small ops oversubscribed across
workers ran up to ~17x slower than single-threaded on the 2-core CI machine."""
import torch

torch.set_num_threads(1)
try:
    import faiss
except ImportError:  # faiss is an optional extra
    faiss = None
if faiss is not None:
    faiss.omp_set_num_threads(1)
