"""Perceptual attacks (StAdv, ReColorAdv, JPEG, LPA, PPGD): their transforms against independent
references (grid_sample, scipy's DCT, explicit loops, colour-science values, torch's Adam, hooks on the
LPIPS network) and, on small trained nets, finite points in [0, 1] inside each threat model's set that
lower accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn

from robustlib.attacks.common import NotApplicable
from robustlib.attacks.perceptual.jpeg import block_dct, decode_change, encode, jpeg, num_coefficients, rgb_to_ycbcr
from robustlib.attacks.perceptual.lpa import lpa, lpips_distance, lpips_features, newton_project, ppgd
from robustlib.attacks.perceptual.recoloradv import (
    apply_color_function,
    interpolate,
    lattice_identity,
    lattice_smoothness,
    luv_to_rgb,
    recoloradv,
    rgb_to_luv,
)
from robustlib.attacks.perceptual.stadv import flow_smoothness, identity_grid, in_stadv_set, stadv, warp
from robustlib.data.datasets import load_split
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
def test_warp_matches_grid_sample_and_zero_flow_is_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 7, generator=g, dtype=torch.float64)
    assert torch.equal(warp(x, torch.zeros(2, 2, 9, 7, dtype=torch.float64)), x)
    flow = 0.3 * torch.randn(2, 2, 9, 7, generator=g, dtype=torch.float64)
    grid = identity_grid(2, 9, 7, x) + flow.flip(1).permute(0, 2, 3, 1)  # grid_sample's (x, y) order
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(warp(x, flow), ref, atol=1e-12, rtol=0)


def test_flow_smoothness_matches_loop():
    """Every pixel, 4 neighbours, the border replicated (a missing neighbour is the pixel itself)."""
    f = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    total = 0.0
    for i in range(4):
        for j in range(5):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                q = f[0, :, min(max(i + di, 0), 3), min(max(j + dj, 0), 4)]
                total += float(((f[0, :, i, j] - q).pow(2).sum() + 1e-10).sqrt())
    assert float(flow_smoothness(f)) == pytest.approx(total, rel=1e-12)


def test_stadv_flow_bound_and_strength(mnist_net):
    model, x, y = mnist_net
    res = stadv(model, x, y, eps=0.05, steps=30)
    adv, flow = res.points, res.info["flow"]
    _valid(adv, x)
    assert flow.abs().max() <= 0.05 and in_stadv_set(x, adv, flow, 0.05).all()
    torch.testing.assert_close(adv, warp(x, flow))
    assert _acc(model, adv, y) < _acc(model, x, y) - 0.2
    with pytest.raises(ValueError, match="eps"):
        stadv(model, x, y, eps=0.0)


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


def test_jpeg_luma_change_is_scipy_idct():
    """For 1 channel, the image change of a coefficient change dq is scipy idctn(Q * dq / 255) blockwise."""
    g = torch.Generator().manual_seed(0)
    dq = torch.randn(1, 256, dtype=torch.float64, generator=g)
    from robustlib.attacks.perceptual.jpeg import LUMA_Q
    q = np.tile(np.array(LUMA_Q, dtype=np.float64) / 255, (2, 2))
    d = dq.numpy().reshape(16, 16)
    ref = np.zeros((16, 16))
    for i in (0, 8):
        for j in (0, 8):
            ref[i:i + 8, j:j + 8] = scipy.fft.idctn((q * d)[i:i + 8, j:j + 8], norm="ortho")
    np.testing.assert_allclose(decode_change(dq, 1, 16, 16).numpy()[0, 0], ref, atol=1e-12)


def test_jpeg_colour_is_420_and_decode_inverts_encode():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=g)
    assert num_coefficients(x) == 1024 + 2 * 256  # advex-uar's cat_var length at 32x32
    dq = torch.zeros(2, 1536, dtype=torch.float64)
    dq[:, 1024:] = torch.randn(2, 512, dtype=torch.float64, generator=g)  # chroma only
    change = decode_change(dq, 3, 32, 32)
    # chroma is carried at half resolution: the change is constant on every 2x2 pixel block
    torch.testing.assert_close(change, change[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1))
    # and its luma (Y) is zero: Y = 0.299 R + 0.587 G + 0.114 B of a pure chroma change (constants to 1e-6)
    torch.testing.assert_close(rgb_to_ycbcr(change)[:, 0], torch.zeros(2, 32, 32, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    # a change on an image whose chroma is constant per 2x2 block re-encodes to exactly that change
    smooth = x[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1) * 0.5 + 0.25
    dq = 0.1 * torch.randn(2, 1536, dtype=torch.float64, generator=g)
    torch.testing.assert_close(encode(smooth + decode_change(dq, 3, 32, 32)) - encode(smooth), dq, atol=1e-4, rtol=0)


def test_jpeg_budget_and_strength(mnist_net):
    model, x, y = mnist_net
    assert torch.equal(jpeg(model, x, y, eps=0.25, steps=0, generator=None).points * 0 + x, x)  # shapes agree
    res = jpeg(model, x, y, eps=0.25, steps=20, generator=torch.Generator().manual_seed(0))
    adv, v = res.points, res.info["variable"]
    _valid(adv, x)
    assert v.abs().max() <= 0.25 and v.shape == (len(y), 32 * 32)  # MNIST is padded to 32
    torch.testing.assert_close(adv, (x + decode_change(0.5 * v, 1, 28, 28)).clamp(0, 1))
    assert _acc(model, adv, y) < _acc(model, x, y)


# --- ReColorAdv -------------------------------------------------------------------------------------
def test_luv_matches_colour_science_values():
    """sRGB white -> L 100, u v 0; black -> 0; the round trip is the identity (float64)."""
    white, black = torch.ones(1, 3, 1, 1, dtype=torch.float64), torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    luv = rgb_to_luv(white).flatten()
    assert float(luv[0]) == pytest.approx(1.0, abs=1e-3)
    assert abs(float(luv[1]) - 0.5) < 2e-3 and abs(float(luv[2]) - 0.5) < 2e-3
    assert float(rgb_to_luv(black).flatten()[0]) == pytest.approx(0.0, abs=1e-9)
    # pure red in CIELUV (D65): L* 53.24, u* 175.01, v* 37.76 (standard tables)
    red = rgb_to_luv(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)).flatten()
    assert float(red[0]) * 100 == pytest.approx(53.24, abs=0.05)
    assert float(red[1]) * 200 - 100 == pytest.approx(175.0, abs=0.5)
    assert float(red[2]) * 200 - 100 == pytest.approx(37.76, abs=0.5)
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    # the reference's 4-digit sRGB matrices are inverse to about 1e-4, hence the tolerance
    torch.testing.assert_close(luv_to_rgb(rgb_to_luv(x)), x, atol=1e-3, rtol=0)


def test_interpolation_reproduces_affine_maps_and_zero_change_is_identity():
    g = torch.Generator().manual_seed(0)
    a, b = 0.05 * torch.randn(3, 3, generator=g, dtype=torch.float64), 0.05 * torch.randn(3, generator=g,
                                                                                           dtype=torch.float64)
    lat = lattice_identity((4, 6, 5), torch.zeros(1, dtype=torch.float64))
    values = (lat @ a.T + b).unsqueeze(0)
    c = torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64)
    expected = torch.einsum("kc,bchw->bkhw", a, c) + b.view(1, 3, 1, 1)
    torch.testing.assert_close(interpolate(c, values), expected, atol=1e-12, rtol=0)
    x = torch.rand(2, 3, 6, 6, generator=g)
    assert torch.equal(apply_color_function(x, torch.zeros(2, 16, 32, 32, 3)), x)


def test_lattice_smoothness_matches_loop():
    o = torch.randn(1, 3, 4, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    total = 0.0
    for i in range(3):
        for j in range(4):
            for k in range(2):
                for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                    q = o[0, min(max(i + d[0], 0), 2), min(max(j + d[1], 0), 3), min(max(k + d[2], 0), 1)]
                    total += float(((o[0, i, j, k] - q).pow(2).sum() + 1e-10).sqrt())
    assert float(lattice_smoothness(o)) == pytest.approx(total, rel=1e-12)


def test_recoloradv_budget_and_strength(colour_net):
    model, x, y = colour_net
    assert _acc(model, x, y) > 0.8
    res = recoloradv(model, x, y, eps=0.06, steps=30, lr=0.01, resolution=(4, 8, 8))
    adv, offsets = res.points, res.info["offsets"]
    _valid(adv, x)
    assert offsets.abs().max() <= 0.06 and offsets.shape == (len(y), 4, 8, 8, 3)
    torch.testing.assert_close(adv, apply_color_function(x, offsets))
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


# --- LPIPS, LPA, PPGD ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpips_net():
    """A small alexnet_cifar analogue trained briefly on MNIST: the fixed LPIPS network."""
    train = load_split("mnist", train=True, root="data")
    torch.manual_seed(1)
    net = build_model("alexnet_cifar", in_channels=1, image_size=28, mean=(0.1307,), std=(0.3081,), hidden=64)
    return _fit(net, train.images(torch.arange(1000, 2000)), train.labels(torch.arange(1000, 2000)), 1)


def _lpips_by_hooks(net, a, b):
    """Independent LPIPS: forward hooks on every ReLU of the whole network, keep 4-D outputs, normalize each
    position's channel vector with vector_norm, sum over layers of the spatial mean of squared differences."""
    feats = {}

    def grab(x):
        out = []
        hooks = [m.register_forward_hook(lambda mod, i, o: out.append(o)) for m in net.modules()
                 if isinstance(m, nn.ReLU)]
        net(x)
        for h in hooks:
            h.remove()
        return [o for o in out if o.dim() == 4]

    fa, fb = grab(a), grab(b)
    total = torch.zeros(a.shape[0], dtype=torch.float64)
    for u, v in zip(fa, fb, strict=True):
        u = u.double() / (torch.linalg.vector_norm(u.double(), dim=1, keepdim=True) + 1e-10)
        v = v.double() / (torch.linalg.vector_norm(v.double(), dim=1, keepdim=True) + 1e-10)
        total += (u - v).pow(2).sum(1).mean((1, 2))
    feats["n_layers"] = len(fa)
    return total.sqrt(), feats


def test_lpips_distance_is_the_networks_lpips(lpips_net, mnist_net):
    _, x, _ = mnist_net
    with torch.no_grad():
        ref, info = _lpips_by_hooks(lpips_net, x[:8], x[8:16])
        d = lpips_distance(lpips_net, x[:8], x[8:16])
        assert info["n_layers"] == 5  # alexnet_cifar's five conv ReLUs
        torch.testing.assert_close(d.double(), ref, rtol=1e-4, atol=1e-6)
        assert torch.equal(lpips_distance(lpips_net, x[:8], x[:8]), torch.zeros(8))


def test_newton_projection_lands_inside_and_leaves_inside_points_alone(lpips_net, mnist_net):
    _, x, _ = mnist_net
    x = x[:16]
    g = torch.Generator().manual_seed(0)
    far = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    near = (x + 1e-3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        phi = lpips_features(lpips_net, x)
        assert (lpips_distance(lpips_net, x, far) > 0.3).all() and (lpips_distance(lpips_net, x, near) < 0.3).all()
    out = newton_project(lpips_net, x, phi, far, 0.3)
    with torch.no_grad():
        assert (lpips_distance(lpips_net, x, out) <= 0.3).all()
    _valid(out, x)
    assert torch.equal(newton_project(lpips_net, x, phi, near, 0.3), near)


@pytest.mark.parametrize("attack,kw", [(lpa, {"steps": 10, "rounds": 2}), (ppgd, {"steps": 5})])
def test_nptm_attacks_stay_in_the_lpips_ball_and_fool(attack, kw, lpips_net, mnist_net):
    model, x, y = mnist_net
    x, y = x[:16], y[:16]  # keeps the suite short: each step is several LPIPS passes
    adv = attack(model, x, y, lpips_net=lpips_net, eps=0.5, generator=torch.Generator().manual_seed(0), **kw).points
    _valid(adv, x)
    with torch.no_grad():
        assert (lpips_distance(lpips_net, x, adv) <= 0.5).all()
    assert _acc(model, adv, y) < _acc(model, x, y) - 0.2
    with pytest.raises(NotApplicable, match="LPIPS network"):
        attack(model, x, y, eps=0.5)
