"""Network sizes and shapes, rebuilding from a spec, and the fast inference copy."""

import numpy as np
import pytest
import torch

from LiverTumorSegLib.core.inference import _inference_copy, plan_tiles, predict_probability
from LiverTumorSegLib.core.network import MHPNet, UNet3D, build_network, count_parameters, default_spec


def test_mhpnet_is_light_and_the_unet_baseline_is_bigger():
    mhp, unet = MHPNet(), UNet3D()
    assert 100_000 < count_parameters(mhp) < 1_000_000
    assert count_parameters(unet) > 3 * count_parameters(mhp)
    assert mhp.in_channels == 3 and unet.in_channels == 1


@pytest.mark.parametrize("arch", ["mhpnet", "unet3d"])
def test_full_patch_output_shape(arch):
    spec = default_spec(arch)
    net = build_network(spec).eval()
    x = torch.randn(2, spec["in_channels"], 32, 24, 40)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, 1, 32, 24, 40)


def test_spec_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = MHPNet(in_channels=5, widths=(4, 8, 16))
    spec = {"arch": "mhpnet", "in_channels": 5, "widths": [4, 8, 16]}
    copy = build_network(spec)
    copy.load_state_dict(net.state_dict())
    x = torch.randn(1, 5, 16, 16, 16)
    net.eval(), copy.eval()
    with torch.inference_mode():
        assert torch.equal(net(x), copy(x))
    with pytest.raises(ValueError):
        build_network({"arch": "transformer", "in_channels": 1, "widths": [8, 16]})


def test_inference_copy_folds_batch_norm_without_changing_the_output():
    torch.manual_seed(1)
    net = MHPNet(in_channels=2, widths=(4, 8, 16))
    net.train()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        for _ in range(3):
            net(torch.randn(2, 2, 16, 16, 16) * 3 + 1)
    net.eval()
    x = torch.randn(1, 2, 24, 16, 32)
    with torch.inference_mode():
        expected = net(x)
        got = _inference_copy(net)(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # original untouched


def test_tiles_partition_the_volume_and_give_the_whole_volume_answer():
    shape = (37, 70, 29)
    tiles = plan_tiles(shape, max_voxels=40**3, halo=8, multiple=4)
    assert 1 < len(tiles) < 6
    cover = np.zeros(shape, int)
    for core, region in tiles:
        cover[core] += 1
        assert all(r.start <= c.start and c.stop <= r.stop for c, r in zip(core, region))
        assert all(r.start % 4 == 0 for r in region)
    assert (cover == 1).all()
    # A 3-level net sees less than 8 voxels away, so tiling with an 8-voxel halo changes nothing.
    torch.manual_seed(2)
    net = MHPNet(in_channels=1, widths=(2, 4)).eval()
    features = np.random.default_rng(0).normal(size=(1,) + shape).astype(np.float32)
    whole = predict_probability(net, features, max_voxels_whole(shape), halo=8)
    tiled = predict_probability(net, features, 40**3, halo=8)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert whole.shape == shape and 0 <= whole.min() and whole.max() <= 1


def max_voxels_whole(shape):
    return int(np.prod([n + 8 for n in shape]))
