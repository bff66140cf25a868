"""NaN / Inf codebooks and scales never enter a VQLinear (from_codes, load_state_dict)."""
from __future__ import annotations

import pytest
import torch

from vq.weights.nn import VQLinear


def _layer_tensors():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (8, 8, 1), generator=g)  # (out, n_groups, M): in = 8 groups x d 2
    codebooks = torch.randn(1, 1, 1, 4, 2, generator=g)  # (R_t, C_t, M, K, d)
    return codes, codebooks, torch.ones(8)


@pytest.mark.parametrize("which", ["codebooks", "scales"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_from_codes_refuses_non_finite(which, bad):
    codes, codebooks, scales = _layer_tensors()
    (codebooks if which == "codebooks" else scales).view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"{which} contain NaN or Inf"):
        VQLinear.from_codes(codes, codebooks, scales)


@pytest.mark.parametrize("which", ["codebooks", "scales"])
def test_load_state_dict_refuses_non_finite_and_keeps_the_layer(which):
    layer = VQLinear.from_codes(*_layer_tensors())
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    state = {k: v.clone() for k, v in before.items()}
    state[which].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"{which} contain NaN or Inf"):
        layer.load_state_dict(state)
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in before.items())
