"""Perceptual attacks (StAdv, ReColorAdv, JPEG, LPA): their transforms against independent references
(scipy's DCT, exact shifts, affine reproduction) and, on small trained nets, finite points in [0, 1]
that obey each attack's own budget and lower accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks import NotApplicable, jpeg, lpa, recoloradv, stadv
from robustlib.attacks.perceptual.jpeg import block_dct, jpeg_decode_delta, jpeg_encode, rgb_to_ycbcr, ycbcr_to_rgb
from robustlib.attacks.perceptual.lpa import lpips_distance
from robustlib.attacks.perceptual.recoloradv import apply_color_function
from robustlib.attacks.perceptual.stadv import flow_smoothness, warp
from robustlib.data import load_split
from robustlib.models import build_model

torch.set_num_threads(1)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(y), 50):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def mnist_net():
    train = load_split("mnist", train=True, root="data")
    torch.manual_seed(0)
    model = _fit(build_model("smallcnn", mean=(0.1307,), std=(0.3081,), width=32),
                 train.images(torch.arange(1000)), train.labels(torch.arange(1000)), 3)
    test = load_split("mnist", train=False, root="data")
    return model, test.images(torch.arange(48)), test.labels(torch.arange(48))


def _colour_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3-channel 8x8 images: a blob of a random colour on gray; the class is the blob's dominant channel."""
    g = torch.Generator().manual_seed(seed)
    col = torch.rand(n, 3, generator=g)
    y = col.argmax(1)
    x = torch.full((n, 3, 8, 8), 0.5)
    x[:, :, 2:6, 2:6] = col.view(n, 3, 1, 1)
    return (x + 0.05 * torch.rand(x.shape, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def colour_net():
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=3, image_size=8, num_classes=3, hidden=(64,))
    x, y = _colour_data(2000, 0)
    _fit(model, x, y, 5)
    xt, yt = _colour_data(64, 1)
    return model, xt, yt


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _valid(x_adv, x):
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1


# --- StAdv ------------------------------------------------------------------------------------------
def test_warp_zero_flow_is_identity_and_integer_flow_is_shift():
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(warp(x, torch.zeros(2, 2, 9, 7)), x)
    flow = torch.zeros(2, 2, 9, 7)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # sample row i+2, column j-1
    out = warp(x, flow)
    assert torch.equal(out[:, :, :-2, 1:], x[:, :, 2:, :-1])
    # a half-pixel flow is the average of the two neighbours (bilinear)
    flow = torch.zeros(2, 2, 9, 7)
    flow[:, 1] = 0.5
    torch.testing.assert_close(warp(x, flow)[..., :-1], (x[..., :-1] + x[..., 1:]) / 2)


def test_flow_smoothness_matches_loop():
    f = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    total = 0.0
    for i in range(4):
        for j in range(5):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                if 0 <= i + di < 4 and 0 <= j + dj < 5:
                    total += float((f[0, :, i, j] - f[0, :, i + di, j + dj]).norm())
    assert float(flow_smoothness(f)) == pytest.approx(total / 20, rel=1e-5)


def test_stadv_budget_and_strength(mnist_net):
    model, x, y = mnist_net
    adv, flow = stadv(model, x, y, eps=0.05, max_flow=1.0, steps=20, return_flow=True)
    _valid(adv, x)
    assert (flow_smoothness(flow) <= 0.05 + 1e-6).all() and flow.abs().max() <= 1.0
    torch.testing.assert_close(adv, warp(x, flow).clamp(0, 1))
    assert _acc(model, adv, y) < _acc(model, x, y)


# --- JPEG -------------------------------------------------------------------------------------------
def test_block_dct_matches_scipy():
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = block_dct(x).numpy()
    ref = np.zeros_like(c)
    for i in range(0, 16, 8):
        for j in range(0, 24, 8):
            ref[..., i:i + 8, j:j + 8] = scipy.fft.dctn(x.numpy()[..., i:i + 8, j:j + 8], axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(c, ref, atol=1e-12)
    torch.testing.assert_close(block_dct(block_dct(x), inverse=True), x)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x)


def test_jpeg_decode_is_scipy_inverse():
    """decode(encode(x) + delta) for 1 channel equals x + scipy idctn(Q * delta) blockwise."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=g)
    delta = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=g)
    from robustlib.attacks.perceptual.jpeg import LUMA_Q
    q = np.tile(np.array(LUMA_Q, dtype=np.float64) / 255, (2, 2))
    ref = x.numpy().copy()
    for i in (0, 8):
        for j in (0, 8):
            ref[0, 0, i:i + 8, j:j + 8] += scipy.fft.idctn((q * delta.numpy()[0, 0])[i:i + 8, j:j + 8], norm="ortho")
    np.testing.assert_allclose(jpeg_decode_delta(x, delta).numpy(), ref, atol=1e-12)
    torch.testing.assert_close(jpeg_encode(jpeg_decode_delta(x, delta)) - jpeg_encode(x), delta)


def test_jpeg_budget_and_strength(mnist_net):
    model, x, y = mnist_net
    adv, delta = jpeg(model, x, y, eps=0.25, steps=20, return_delta=True)
    _valid(adv, x)
    assert delta.abs().max() <= 0.25 and delta.shape[-2:] == (32, 32)  # MNIST is padded to 32
    torch.testing.assert_close(adv, jpeg_decode_delta(x, delta).clamp(0, 1))
    assert _acc(model, adv, y) < _acc(model, x, y)


# --- ReColorAdv -------------------------------------------------------------------------------------
def test_color_function_reproduces_affine_maps_and_is_per_colour():
    g = torch.Generator().manual_seed(0)
    a, b = 0.05 * torch.randn(3, 3, generator=g), 0.05 * torch.randn(3, generator=g)
    grid = 5
    lat = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, grid)] * 3, indexing="ij"), -1)  # (G,G,G,3)
    offsets = (lat @ a.T + b).unsqueeze(0)
    x = torch.rand(1, 3, 6, 6, generator=g)
    expected = x + torch.einsum("kc,bchw->bkhw", a, x) + b.view(1, 3, 1, 1)
    torch.testing.assert_close(apply_color_function(x, offsets), expected, atol=1e-6, rtol=0)
    assert torch.equal(apply_color_function(x, torch.zeros(1, grid, grid, grid, 3)), x)


def test_recoloradv_budget_and_strength(colour_net):
    model, x, y = colour_net
    assert _acc(model, x, y) > 0.8
    adv, offsets = recoloradv(model, x, y, eps=0.1, grid=6, steps=30, return_offsets=True)
    _valid(adv, x)
    assert offsets.abs().max() <= 0.1 and (adv - x).abs().max() <= 0.1 + 1e-6
    # one colour function per image: equal input colours map to equal output colours
    xx = x.clone()
    xx[:, :, 0, 0] = xx[:, :, 4, 4]
    out = apply_color_function(xx, offsets)
    torch.testing.assert_close(out[:, :, 0, 0], out[:, :, 4, 4])
    assert _acc(model, adv, y) < _acc(model, x, y) - 0.2


def test_recoloradv_not_applicable_to_grayscale(mnist_net):
    model, x, y = mnist_net
    with pytest.raises(NotApplicable, match="3-channel"):
        recoloradv(model, x, y)


# --- LPA --------------------------------------------------------------------------------------------
def test_lpips_distance_is_a_pseudometric(mnist_net):
    model, x, _ = mnist_net
    a, b, c = x[:8], x[8:16], x[16:24]
    with torch.no_grad():
        dab, dba, dac, dcb = (lpips_distance(model, p, q) for p, q in ((a, b), (b, a), (a, c), (c, b)))
        assert torch.equal(lpips_distance(model, a, a), torch.zeros(8))
    torch.testing.assert_close(dab, dba)
    assert (dab <= dac + dcb + 1e-6).all() and (dab > 0).all()


def test_lpa_budget_and_strength(mnist_net):
    model, x, y = mnist_net
    adv = lpa(model, x, y, eps=0.5, steps=5, rounds=2, generator=torch.Generator().manual_seed(0))
    _valid(adv, x)
    with torch.no_grad():
        assert (lpips_distance(model, x, adv) <= 0.5).all()
    assert _acc(model, adv, y) < _acc(model, x, y)


def test_lpa_needs_preacts(mnist_net):
    model, x, y = mnist_net
    with pytest.raises(NotApplicable, match="return_preacts"):
        lpa(nn.Sequential(model), x, y, steps=1)
