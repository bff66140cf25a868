"""vq_kernels — lookup-table decode kernels (reference, CPU fast path, Triton)."""
__all__: list[str] = []
