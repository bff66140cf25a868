"""``VQLinear``: a Linear layer whose weight is stored as VQ codes (docs/formats.md layout).

Buffers (all plain tensors, so ``state_dict()`` round-trips through safetensors):

=============  ============================  =============================================
name           shape                         dtype
=============  ============================  =============================================
codes          (out, words_per_row)          int32, bit-packed (docs/formats.md)
codebooks      (R_t, C_t, M, K, d)           float16 / bfloat16 / float32
scales         (out,)                        float
bias           (out,) (only if bias=True)    float
=============  ============================  =============================================

Static metadata: ``layout``, the :class:`vq_kernels.layout.VQLayout` that the stored form
(``QuantizedWeight.layout``) and the kernels read too; ``config()`` = its fields + bias.
``VQLinear(**config)`` builds an empty layer of the right shapes that ``load_state_dict`` fills.

The forward pass goes through :mod:`vq_kernels.ops` (Triton on CUDA, the CPU LUT path on CPU,
the pure-torch reference otherwise). On CPU the layer caches the unpacked code indices the
first time it runs (``cpu_cache=True``, see :mod:`vq_kernels.cpu` for the memory cost).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from vq_kernels import cpu, ops, reference
from vq_kernels.layout import VQLayout, check_input

__all__ = ["VQLinear"]

log = logging.getLogger(__name__)

_BACKENDS = ("auto", "reference")


class VQLinear(nn.Module):
    """Linear layer ``y = x @ W.T + bias`` with ``W`` decoded from VQ codes.

    Args:
        in_features, out_features: the dense weight is ``(out_features, in_features)``.
        d: vector length (``in_features % d == 0``).
        K: codewords per codebook; M: number of additive codebooks.
        bits: packed code width (default ``vq_kernels.packing.index_bits(K)``).
        tile_rows, tile_groups: codebook tiling (default: one global codebook).
        bias: whether the layer has a bias buffer.
        dtype: codebook and bias dtype; scale_dtype: scales dtype (default ``dtype``; float32 is
            allowed with half codebooks); device: where buffers live.
        backend: ``"auto"`` (fast kernels by device) or ``"reference"`` (pure torch).
        cpu_cache: on CPU, keep unpacked code indices after the first call (faster, more memory).
    """

    codes: Tensor
    codebooks: Tensor
    scales: Tensor
    bias: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        d: int,
        K: int,
        M: int = 1,
        bits: int | None = None,
        tile_rows: int | None = None,
        tile_groups: int | None = None,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        scale_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        backend: str = "auto",
        cpu_cache: bool = True,
    ) -> None:
        super().__init__()
        lay = VQLayout.make(out_features, in_features, d=d, K=K, M=M, bits=bits, tile_rows=tile_rows,
                            tile_groups=tile_groups)
        self._setup(
            lay, torch.zeros(out_features, lay.words_per_row, dtype=torch.int32, device=device),
            torch.zeros(lay.codebook_shape, dtype=dtype, device=device),
            torch.ones(out_features, dtype=scale_dtype or dtype, device=device),
            torch.zeros(out_features, dtype=dtype, device=device) if bias else None, backend, cpu_cache,
        )

    def _setup(self, layout: VQLayout, codes: Tensor, codebooks: Tensor, scales: Tensor, bias: Tensor | None,
               backend: str, cpu_cache: bool) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.layout, self.backend, self.cpu_cache = layout, backend, cpu_cache
        self.register_buffer("codes", codes)
        self.register_buffer("codebooks", codebooks)
        self.register_buffer("scales", scales)
        if bias is not None:
            self.register_buffer("bias", bias)
        else:
            self.bias = None  # a plain attribute: forward reads it without Module.__getattr__
        # unpacked codes for the CPU kernels (derived, never saved); see prepare_cpu()
        self.register_buffer("_cpu_index", None, persistent=False)
        self._cpu_plan: cpu.Plan | None = None  # index + float32 codebooks, checked once (eager CPU)
        self.register_load_state_dict_pre_hook(VQLinear._before_load)
        self.register_load_state_dict_post_hook(VQLinear._after_load)

    # -- metadata --------------------------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.layout.in_features

    @property
    def out_features(self) -> int:
        return self.layout.out_features

    @property
    def d(self) -> int:
        return self.layout.d

    @property
    def M(self) -> int:  # noqa: N802 (the paper's name)
        return self.layout.M

    @property
    def K(self) -> int:  # noqa: N802
        return self.layout.K

    @property
    def bits(self) -> int:
        return self.layout.bits

    @property
    def tile_rows(self) -> int:
        return self.layout.tile_rows

    @property
    def tile_groups(self) -> int:
        return self.layout.tile_groups

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``VQLinear(**config(), dtype=...)`` rebuilds the shapes."""
        return {**self.layout.config(), "bias": self.bias is not None}

    def extra_repr(self) -> str:
        lay = self.layout
        return (
            f"in_features={lay.in_features}, out_features={lay.out_features}, d={lay.d}, M={lay.M}, "
            f"K={lay.K}, bits={lay.bits}, tiles=({lay.tile_rows}, {lay.tile_groups}), "
            f"code_bits_per_weight={lay.code_bits_per_weight:g}, bias={self.bias is not None}"
        )

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_codes(
        cls,
        codes: Tensor,
        codebooks: Tensor,
        scales: Tensor,
        bias: Tensor | None = None,
        *,
        tile_rows: int | None = None,
        tile_groups: int | None = None,
        bits: int | None = None,
        **kwargs: Any,
    ) -> "VQLinear":
        """Build from logical codes (out, n_groups, M) int, codebooks (R_t, C_t, M, K, d), scales (out,).

        Everything is validated (shapes, dtypes, codes in ``[0, K)``) before the codes are packed.
        """
        if not isinstance(codes, Tensor) or codes.dim() != 3:
            got = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"codes must be logical codes of shape (out, n_groups, M), got {got}")
        lay = VQLayout.infer(codes, codebooks, bits=bits, tile_rows=tile_rows, tile_groups=tile_groups)
        lay.check_logical_codes(codes)
        lay.check_codebooks(codebooks, scales)
        lay.check_finite(codebooks, scales)
        if bias is not None:
            if not isinstance(bias, Tensor) or not bias.dtype.is_floating_point:
                raise TypeError("bias must be a float tensor or None")
            if tuple(bias.shape) != (lay.out_features,):
                raise ValueError(f"bias must have shape ({lay.out_features},), got {tuple(bias.shape)}")
        dev = codebooks.device  # the layer owns copies of the caller's tensors
        bias = None if bias is None else bias.detach().to(dev, codebooks.dtype, copy=True)
        return cls.from_packed(lay, lay.pack(codes.to(dev)), codebooks.detach().clone().contiguous(),
                               scales.detach().clone().contiguous(), bias, **kwargs)

    @classmethod
    def from_packed(
        cls, layout: VQLayout, codes: Tensor, codebooks: Tensor, scales: Tensor, bias: Tensor | None = None,
        *, backend: str = "auto", cpu_cache: bool = True,
    ) -> "VQLinear":
        """Wrap tensors that already match ``layout`` — packed codes (out, words_per_row) int32,
        codebooks ``layout.codebook_shape``, scales (out,), bias (out,) or None — without checking
        or copying them: for tensors checked where they entered (:meth:`from_codes`,
        ``QuantizedWeight.from_stored``). ``load_state_dict`` checks what it loads."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(layout, codes, codebooks, scales, bias, backend, cpu_cache)
        return layer

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        *,
        d: int = 8,
        K: int = 256,
        M: int = 1,
        tile_rows: int | None = None,
        tile_groups: int | None = None,
        niter: int = 10,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> "VQLinear":
        """Quantize a dense Linear with plain (residual) k-means — a simple baseline.

        Rows are normalised by their RMS (kept as ``scales``); each codebook tile's ``d``-vectors
        are fitted by the core's :class:`vq.codebook.ResidualVQ` with ``M`` stages (``M = 1``: one
        k-means; decode = sum, as the layout requires). A tile with fewer than ``K`` vectors gets
        that many codewords (the rest stay 0, unused). Hessian-aware solvers (GPTVQ / VPTQ / AQLM)
        live in ``vq.weights``.
        """
        from vq.codebook import ResidualVQ

        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().float().cpu()  # (out, in)
        lay = VQLayout.make(*w.shape, d=d, K=K, M=M, tile_rows=tile_rows, tile_groups=tile_groups)
        scales = w.pow(2).mean(1).sqrt().clamp_min(torch.finfo(torch.float32).tiny)  # (out,)
        vecs = rearrange(w / scales[:, None], "o (g d) -> o g d", d=d)  # (out, n_groups, d)
        codebooks = torch.zeros(lay.codebook_shape)  # (R_t, C_t, M, K, d)
        codes = torch.zeros(lay.out_features, lay.n_groups, M, dtype=torch.int64)
        tr, tg = lay.tile_rows, lay.tile_groups
        for i in range(lay.row_tiles):
            for j in range(lay.group_tiles):
                rows, grps = slice(i * tr, (i + 1) * tr), slice(j * tg, (j + 1) * tg)
                block = vecs[rows, grps]  # (tr, tg, d)
                x = block.reshape(-1, d)  # (tr*tg, d)
                rvq = ResidualVQ(d, M, min(K, x.shape[0]), niter=niter, seed=seed).fit(x)
                codebooks[i, j, :, : rvq.cfg.k] = rvq.codebooks  # (M, k, d)
                codes[rows, grps] = rvq.encode(x).reshape(*block.shape[:2], M)  # (tr, tg, M)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype).cpu().clone()
        layer = cls.from_packed(lay, lay.pack(codes), codebooks.to(dtype), scales.to(dtype), bias, **kwargs)
        return layer.to(linear.weight.device)

    # -- decode ----------------------------------------------------------------------------
    def unpacked_codes(self) -> Tensor:
        """(out, n_groups, M) int64 logical codes."""
        return self.layout.unpack(self.codes)

    def to_dense(self) -> Tensor:
        """(out, in) dense weight in the codebooks' dtype (bias not included)."""
        lay = self.layout
        if self.backend == "reference":
            return reference.dequantize(self.unpacked_codes(), self.codebooks, self.scales, lay.tile_rows, lay.tile_groups)
        return ops.dequantize(self.codes, self.codebooks, self.scales, lay.in_features, lay.bits, lay.tile_rows, lay.tile_groups)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) -> (..., out_features) in x's dtype."""
        lay = self.layout
        if self.backend == "reference":
            check_input(x, lay)
            y = reference.vq_linear(x, self.unpacked_codes(), self.codebooks, self.scales, lay.tile_rows, lay.tile_groups)
        elif self.cpu_cache and x.device.type == "cpu" and not torch.compiler.is_compiling():
            # eager CPU: the cached plan (index + float32 codebooks, checked once) runs the product
            # (plain attributes only: a buffer read through Module.__getattr__ costs ~1 us)
            plan = self._cpu_plan
            if plan is None or plan.codes_changed():
                self.prepare_cpu()  # first call, or the codes were replaced or edited in place
                plan = self._cpu_plan
            if x.dim() == 2:
                y = plan(x)  # checks x
            elif x.dim() < 1 or x.shape[-1] != lay.in_features or x.numel() == 0:
                check_input(x, lay)  # a wrong width must not be folded by the reshape
                y = x.new_zeros(*x.shape[:-1], lay.out_features)
            else:
                y = plan(x.reshape(-1, lay.in_features)).reshape(*x.shape[:-1], lay.out_features)
        else:
            index = self._cpu_index if x.device.type == "cpu" else None
            y = ops.vq_linear(x, self.codes, self.codebooks, self.scales, lay, index=index)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    # -- state -----------------------------------------------------------------------------
    def prepare_cpu(self) -> None:
        """Unpack the codes once into the index the CPU kernels read (uint8 for K <= 256, else
        int16: ``out * n_groups * M`` bytes or twice that). Called by the first eager CPU
        forward; call it yourself before ``torch.compile`` so the compiled graph uses it."""
        if self.codes.device.type != "cpu":
            raise ValueError(f"prepare_cpu needs the layer on the CPU, it is on {self.codes.device}")
        self._cpu_index = cpu.prepare(self.codes, self.layout)
        self._cpu_plan = cpu.Plan(self._cpu_index, self.codebooks, self.scales, self.layout, codes=self.codes)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("codes", "codebooks", "scales") and self.__dict__.get("_cpu_plan") is not None:
            self.__dict__["_cpu_plan"] = None  # a replaced tensor: rebuild the CPU plan on the next call
        super().__setattr__(name, value)

    def _apply(self, fn, recurse=True):  # .to(device) / .half(): drop the derived index
        self._cpu_index, self._cpu_plan = None, None
        return super()._apply(fn, recurse)

    @staticmethod
    def _before_load(module: "VQLinear", state: dict[str, Any], prefix: str, *args: Any) -> None:
        """Refuse NaN / Inf codebooks or scales before they are copied into the layer."""
        cb, sc = state.get(prefix + "codebooks", module.codebooks), state.get(prefix + "scales", module.scales)
        if isinstance(cb, Tensor) and isinstance(sc, Tensor):  # anything else: load_state_dict's own error
            try:
                module.layout.check_finite(cb, sc)
            except ValueError as e:
                raise ValueError(f"{prefix or 'VQLinear '}{e}") from e

    @staticmethod
    def _after_load(module: "VQLinear", incompatible: Any) -> None:
        module._cpu_index, module._cpu_plan = None, None
        lay = module.layout
        lay.check_packed_codes(module.codes)
        lay.check_codebooks(module.codebooks, module.scales)
