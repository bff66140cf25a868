"""GPTVQ (van Baalen et al., 2024, "GPTVQ: The Blessing of Dimensionality for LLM Quantization"):
vector quantization of ``d`` consecutive input columns with GPTQ-style error feedback.

Notation as in GPTQ: ``H`` the layer Hessian (2XᵀX), ``H⁻¹ = UᵀU`` with ``U`` upper triangular.
Weights are first divided by a per-row scale ``s`` (fp16, stored) so rows share codebooks.

1. Columns are walked in blocks of ``cols`` columns (the codebook tile width). At the start of a
   block, each tile of ``tile_rows`` rows × ``cols`` columns gets its own codebook of ``K``
   ``d``-vectors, initialised by k-means (EM) on the block's current weights, each coordinate
   weighted by its importance (Hessian-weighted EM, the paper's §3.2).
2. Inside the block, ``d`` columns ``J`` at a time: every row's vector ``w_J`` is assigned the
   codeword minimising the OBS loss of quantizing ``J`` jointly,

       ‖(w_J - c) U_JJ⁻¹‖²          (= (w_J - c) [H⁻¹]_JJ⁻¹ (w_J - c)ᵀ, the d-column OBS error)

   and the error is fed back to the columns not yet quantized (the OBS update for ``d`` columns):

       E = (W_J - Q_J) U_JJ⁻¹,        W[:, R] -= E · U[J, R]

   (``d = 1`` gives GPTQ's ``err = (w - q) / U_jj``). Updates are lazy per block as in GPTQ.
   The importance of coordinate ``a`` of group ``J`` used by the EM in step 1 is
   ``diag(U_JJ⁻¹ U_JJ⁻ᵀ)_a`` (the diagonal of that metric) times ``s_r²``.
3. Codebook update: with all codes fixed, the codebooks of the layer are refit to minimise the
   layer's proxy loss ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` — a linear least-squares problem in the codebook
   entries, solved by Jacobi-preconditioned conjugate gradients (never worse than its start).
4. Optionally the codebooks are stored in 8 bits (one fp16 scale and minimum per codebook).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from einops import rearrange
from torch import Tensor

from vq.codebook import KMeans
from vq.weights.format import QuantizedWeight
from vq.weights.hessian import damped, inverse_cholesky

__all__ = ["GPTVQConfig", "gptvq_quantize", "tile_shape", "update_codebooks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTVQConfig:
    """GPTVQ settings.

    dim: vector length ``d`` (input columns per code). index_bits: bits per code, ``K = 2**index_bits``
    (code bits per weight = index_bits / dim). weights_per_codebook: target weights per codebook
    tile (called ``group_size`` before; rtn / gptq's ``group_size`` is columns per grid).
    block_cols: most columns per codebook tile (the largest multiple of ``dim`` dividing
    ``in_features`` and not above it is used). em_iters / em_init: k-means iterations and seeding
    of the codebook init.
    update_iters: conjugate-gradient steps of the codebook update (0 = no update).
    codebook_bits: 8 (8-bit codebooks) or None (fp16). row_scale: divide rows by their RMS first.
    damp: Hessian damping relative to mean(diag H).
    """

    dim: int = 4
    index_bits: int = 8
    weights_per_codebook: int = 32768
    block_cols: int = 256
    em_iters: int = 10
    em_init: str = "random"
    update_iters: int = 10
    codebook_bits: int | None = 8
    row_scale: bool = True
    damp: float = 0.01

    def __post_init__(self) -> None:
        for name in ("dim", "index_bits", "weights_per_codebook", "block_cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.index_bits > 16:
            raise ValueError(f"index_bits must be <= 16 (K <= 65536), got {self.index_bits}")
        if self.em_iters < 0 or self.update_iters < 0:
            raise ValueError("em_iters and update_iters must be >= 0")
        if self.em_init not in ("k-means++", "random"):
            raise ValueError(f"em_init must be 'k-means++' or 'random', got {self.em_init!r}")
        if self.codebook_bits not in (8, None):
            raise ValueError(f"codebook_bits must be 8 or None (fp16), got {self.codebook_bits!r}")
        if self.block_cols < self.dim:
            raise ValueError(f"block_cols={self.block_cols} is smaller than dim={self.dim}")
        if not 0.0 <= self.damp < 1e3:
            raise ValueError(f"damp must be >= 0, got {self.damp}")

    @property
    def K(self) -> int:  # noqa: N802 (the paper's name)
        return 1 << self.index_bits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTVQConfig":
        """Inverse of :meth:`to_dict`; a config saved before the rename (``group_size``) still loads."""
        d = dict(d)
        if "group_size" in d:
            old = d.pop("group_size")
            if d.setdefault("weights_per_codebook", old) != old:
                raise ValueError(
                    f"gptvq config has both group_size={old} (the old name) and weights_per_codebook="
                    f"{d['weights_per_codebook']}; keep only weights_per_codebook"
                )
            log.info("gptvq config: the old key group_size=%s read as weights_per_codebook", old)
        return cls(**d)


def tile_shape(out_features: int, in_features: int, config: GPTVQConfig) -> tuple[int, int]:
    """(tile_rows, cols): codebook tile of ``tile_rows`` rows × ``cols`` input columns.

    ``cols`` is the largest multiple of ``d`` that divides ``in_features`` and is ≤ ``block_cols``;
    the rows are split into ``round(out·cols / weights_per_codebook)`` (≥ 1) near-equal tiles. With 4-bit
    codes (K ≤ 16) split rows are rounded up to whole 16-row blocks, the unit of the CPU's
    in-register kernel (``vq_kernels.cpu.index_format``), so a tile may hold up to 15 more rows.
    """
    d = config.dim
    if in_features % d:
        raise ValueError(f"in_features={in_features} is not a multiple of dim={d}")
    cols = max(c for c in range(d, min(config.block_cols, in_features) + 1, d) if in_features % c == 0)
    r_t = max(1, round(out_features * cols / config.weights_per_codebook))
    tile_rows = -(-out_features // r_t)
    if r_t > 1 and config.index_bits <= 4:
        tile_rows = min(out_features, -(-tile_rows // 16) * 16)
    return tile_rows, cols


def _nearest(x: Tensor, cb: Tensor, tile_rows: int) -> Tensor:
    """Nearest codeword per row with tile-local codebooks.

    x (out, d) transformed vectors; cb (R_t, K, d) transformed codebooks; row r uses tile
    r // tile_rows. Returns (out,) int64.
    """
    out, d = x.shape
    r_t = cb.shape[0]
    pad = r_t * tile_rows - out
    xp = torch.cat([x, x.new_zeros(pad, d)]) if pad else x
    xt = xp.view(r_t, tile_rows, d)  # (R_t, tile_rows, d)
    dist = (cb * cb).sum(-1)[:, None, :] - 2.0 * torch.bmm(xt, cb.transpose(1, 2))  # (R_t, tile_rows, K)
    return dist.argmin(-1).reshape(-1)[:out]


def _fit_codebook(x: Tensor, w: Tensor, K: int, iters: int, init: str, seed: int) -> Tensor:
    """Hessian-weighted k-means (EM) codebook (K, d) for vectors x (n, d) with importance w (n, d)."""
    n = x.shape[0]
    k = min(K, n)
    km = KMeans(k, niter=iters, init=init, seed=seed, backend="torch").fit(x, weights=w)
    c = km.centroids.float()
    if k < K:  # fewer vectors than codewords: the spare entries repeat (they are never used)
        c = torch.cat([c, c[torch.arange(K - k) % k]])
    return c


@torch.no_grad()
def update_codebooks(
    Wn: Tensor, s: Tensor, H: Tensor, codes: Tensor, codebooks: Tensor, tile_rows: int, iters: int
) -> Tensor:
    """Refit codebooks for fixed codes to minimise ``tr((W - Ŵ) H (W - Ŵ)ᵀ)`` (preconditioned CG).

    Wn (out, in) row-normalised target (W / s); s (out,) row scales; H (in, in);
    codes (out, n_groups) int64; codebooks (R_t, C_t, K, d). Returns new codebooks of the same
    shape; they are returned only if the loss went down (else the input is returned).
    """
    out, inp = Wn.shape
    r_t, c_t, K, d = codebooks.shape
    n_groups = inp // d
    tile_groups = -(-n_groups // c_t)
    Hf = H.float()
    s2 = (s * s).float()  # (out,)
    rt = torch.arange(out) // tile_rows
    ct = torch.arange(n_groups) // tile_groups
    idx = (rt[:, None] * c_t + ct[None, :]) * K + codes  # (out, n_groups) flat codeword index
    flat = idx.reshape(-1)
    n_entries = r_t * c_t * K

    def decode(c: Tensor) -> Tensor:  # (n_entries, d) -> (out, in)
        return rearrange(c[idx], "o g d -> o (g d)")

    def scatter(G: Tensor) -> Tensor:  # (out, in) -> (n_entries, d), G already row-weighted
        g3 = rearrange(G, "o (g d) -> (o g) d", d=d)
        return torch.zeros(n_entries, d).index_add_(0, flat, g3)

    def A(c: Tensor) -> Tensor:  # the normal-equation operator
        return scatter(s2[:, None] * (decode(c) @ Hf))

    def loss(c: Tensor) -> float:  # float32 GEMM, float64 reduction
        E = Wn - decode(c)
        return float(((E @ Hf) * E).sum(1).double() @ s2.double())

    x = codebooks.reshape(n_entries, d).float().clone()
    b = scatter(s2[:, None] * (Wn @ Hf))
    diag_h = rearrange(torch.diag(Hf), "(g d) -> g d", d=d)  # (n_groups, d)
    precond = torch.zeros(n_entries, d).index_add_(0, flat, (s2[:, None, None] * diag_h[None]).reshape(-1, d))
    used = precond > 0
    precond = torch.where(used, precond, torch.ones_like(precond))
    start = loss(x)
    r = b - A(x)
    r[~used] = 0
    z = r / precond
    p = z.clone()
    rz = float((r * z).sum())
    for _ in range(iters):
        if rz <= 0:
            break
        Ap = A(p)
        pAp = float((p * Ap).sum())
        if pAp <= 0:
            break
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        z = r / precond
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    end = loss(x)
    log.debug("codebook update: proxy loss %.6g -> %.6g", start, end)
    if not end < start:
        return codebooks
    return x.reshape(r_t, c_t, K, d)


def _vq_pass(
    Wn: Tensor, U: Tensor, Ainv: Tensor, codebooks: Tensor, tile_rows: int, cols: int,
    init: Callable[[int, int, Tensor], None],
) -> Tensor:
    """One GPTVQ sweep over the columns: assignment + OBS error feedback (steps 1-2).

    Wn (out, in) row-normalised weights; U (in, in) upper Cholesky factor of H⁻¹; Ainv
    (n_groups, d, d) = U_JJ⁻¹ per group; codebooks (R_t, C_t, K, d), filled in place by
    ``init(cb_j, i1, block)`` at the start of each column block.
    Returns codes (out, n_groups) int64.
    """
    out, inp = Wn.shape
    d = codebooks.shape[-1]
    W = Wn.clone()  # updated in place by the error feedback
    codes = torch.zeros(out, inp // d, dtype=torch.long)
    rtile = torch.arange(out) // tile_rows  # (out,) row -> row tile
    for cb_j, i1 in enumerate(range(0, inp, cols)):
        i2 = i1 + cols
        g1 = i1 // d
        init(cb_j, i1, W[:, i1:i2])
        W1 = W[:, i1:i2].clone()  # (out, cols)
        Err1 = torch.zeros_like(W1)
        for j in range(0, cols, d):
            g = g1 + j // d
            A = Ainv[g]  # (d, d)
            wJ = W1[:, j : j + d]  # (out, d)
            c = _nearest(wJ @ A, codebooks[:, cb_j] @ A, tile_rows)  # (out,)
            codes[:, g] = c
            qJ = codebooks[rtile, cb_j, c]  # (out, d)
            E = (wJ - qJ) @ A  # (out, d) scaled error
            W1[:, j + d :] -= E @ U[i1 + j : i1 + j + d, i1 + j + d : i2]
            Err1[:, j : j + d] = E
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return codes


@torch.no_grad()
def gptvq_quantize(W: Tensor, H: Tensor, config: GPTVQConfig, seed: int = 0) -> QuantizedWeight:
    """W (out, in) float, H (in, in) Hessian -> QuantizedWeight (kind ``vq``, M = 1)."""
    out, inp = W.shape
    d, K = config.dim, config.K
    tile_rows, cols = tile_shape(out, inp, config)
    r_t, c_t = -(-out // tile_rows), inp // cols
    H, dead = damped(H, config.damp)
    W = W.clone().float()
    W[:, dead] = 0.0
    if config.row_scale:
        s = W.pow(2).mean(1).sqrt().to(torch.float16).float()  # (out,) fp16-exact
        s = torch.where(s > 0, s, torch.ones_like(s))
    else:
        s = torch.ones(out)
    Wn = W / s[:, None]  # (out, in) the target, row-normalised
    U = inverse_cholesky(H).float()  # (in, in) upper
    # A_g = U_JJ⁻¹ for every group J of d columns: (n_groups, d, d) upper triangular
    UJJ = torch.stack([U[j : j + d, j : j + d] for j in range(0, inp, d)])  # (n_groups, d, d)
    Ainv = torch.linalg.solve_triangular(UJJ, torch.eye(d).expand_as(UJJ), upper=True)  # (n_groups, d, d)
    importance = torch.diagonal(Ainv @ Ainv.transpose(1, 2), dim1=1, dim2=2)  # (n_groups, d)
    codebooks = torch.zeros(r_t, c_t, K, d)

    def init(cb_j: int, i1: int, block: Tensor) -> None:
        """Step 1: Hessian-weighted EM codebook for each row tile of this column block."""
        vecs = rearrange(block, "o (g d) -> o g d", d=d)  # (out, cols/d, d)
        imp = importance[i1 // d : (i1 + cols) // d]  # (cols/d, d)
        for cb_i in range(r_t):
            rows = slice(cb_i * tile_rows, min(out, (cb_i + 1) * tile_rows))
            x = vecs[rows].reshape(-1, d)  # (rows*cols/d, d)
            w = (s[rows, None, None] ** 2 * imp[None]).reshape(-1, d)  # (rows*cols/d, d)
            codebooks[cb_i, cb_j] = _fit_codebook(x, w, K, config.em_iters, config.em_init, seed + cb_j * r_t + cb_i)

    codes = _vq_pass(Wn, U, Ainv, codebooks, tile_rows, cols, init)  # steps 1-2
    if config.update_iters:  # step 3: codebook update on the layer's proxy loss
        codebooks = update_codebooks(Wn, s, H, codes, codebooks, tile_rows, config.update_iters)
    # step 4: storage (8-bit or fp16 codebooks)
    return QuantizedWeight.from_vq(
        codes, codebooks, s, tile_rows=tile_rows, tile_groups=cols // d, codebook_bits=config.codebook_bits
    )
