"""bench/tokenizer_layers.py's refit_decoder: fitting K cell means is fitting every vector."""
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

_spec = importlib.util.spec_from_file_location(
    "tokenizer_layers", Path(__file__).resolve().parents[2] / "bench" / "tokenizer_layers.py")
tl = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("tokenizer_layers", tl)  # dataclasses look their module up
_spec.loader.exec_module(tl)


def test_refit_decoder_lowers_the_error_on_every_vector_and_leaves_the_original():
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(40, 4, generator=g)  # (k, d) quantized latents of 40 cells
    codes = torch.randint(40, (3000,), generator=g)
    codes[codes == 7] = 8  # one empty cell
    x = torch.tanh(cb[codes] @ torch.randn(4, 12, generator=g)) + 0.1 * torch.randn(3000, 12, generator=g)
    torch.manual_seed(0)
    dec = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 12))
    before = {n: t.clone() for n, t in dec.state_dict().items()}
    refit = tl.refit_decoder(dec, cb[codes], codes, x, steps=300, lr=1e-2)
    assert all(torch.equal(before[n], t) for n, t in dec.state_dict().items())
    with torch.no_grad():
        full = lambda d: float((d(cb[codes]) - x).square().mean())  # noqa: E731
        # the floor: every cell decoded to its own mean (what a perfect decoder would output)
        means = torch.stack([x[codes == j].mean(0) if bool((codes == j).any()) else torch.zeros(12) for j in range(40)])
        floor = float((means[codes] - x).square().mean())
        assert full(refit) < 0.5 * full(dec)
        assert floor <= full(refit) < floor + 0.1 * (full(dec) - floor)
