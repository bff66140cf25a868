"""vq_tokenizers.posthoc.refit_decoder: fitting K cell means is fitting every vector."""
import pytest
import torch
from torch import nn

from vq_tokenizers.posthoc import refit_decoder


def _problem():
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(40, 4, generator=g)  # (k, d) quantized latents of 40 cells
    codes = torch.randint(40, (3000,), generator=g)
    codes[codes == 7] = 8  # one empty cell
    x = torch.tanh(cb[codes] @ torch.randn(4, 12, generator=g)) + 0.1 * torch.randn(3000, 12, generator=g)
    torch.manual_seed(0)
    dec = nn.Sequential(nn.Linear(4, 32), nn.GELU(), nn.Linear(32, 12))
    return cb, codes, x, dec


def test_refit_decoder_lowers_the_error_on_every_vector_and_leaves_the_original():
    cb, codes, x, dec = _problem()
    before = {n: t.clone() for n, t in dec.state_dict().items()}
    refit = refit_decoder(dec, cb[codes], codes, x, steps=300, lr=1e-2)
    assert all(torch.equal(before[n], t) for n, t in dec.state_dict().items())
    with torch.no_grad():
        full = lambda d: float((d(cb[codes]) - x).square().mean())  # noqa: E731
        # the floor: every cell decoded to its own mean (what a perfect decoder would output)
        means = torch.stack([x[codes == j].mean(0) if bool((codes == j).any()) else torch.zeros(12) for j in range(40)])
        floor = float((means[codes] - x).square().mean())
        assert full(refit) < 0.5 * full(dec)
        assert floor <= full(refit) < floor + 0.1 * (full(dec) - floor)


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(codes=torch.zeros(10, dtype=torch.long)), ValueError),  # n does not match
        (dict(codes=torch.zeros(3000)), TypeError),  # float codes
        (dict(codes=torch.full((3000,), -1)), ValueError),  # a dropped stage's code
        (dict(x=torch.zeros(10, 12)), ValueError),
        (dict(steps=-1), ValueError),
        (dict(lr=0.0), ValueError),
    ],
)
def test_refit_decoder_rejects_bad_input(change, error):
    cb, codes, x, dec = _problem()
    args = {**dict(q=cb[codes], codes=codes, x=x, steps=1, lr=1e-2), **change}
    with pytest.raises(error):
        refit_decoder(dec, **args)
