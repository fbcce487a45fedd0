import torch

from napari_fusion.nets.csc import DCU, SoftShrink, make_activation


def test_soft_shrink_zeroes_small_values_and_shrinks_large_ones():
    act = SoftShrink(2, init=0.5)
    x = torch.tensor([-2.0, -0.3, 0.0, 0.4, 1.5]).view(1, 1, 5, 1).repeat(1, 2, 1, 1)
    y = act(x)[0, 0, :, 0]
    assert torch.allclose(y, torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0]))


def test_soft_shrink_negative_theta_acts_as_identity_not_expansion():
    act = SoftShrink(1, init=-1.0)
    x = torch.randn(1, 1, 4, 4)
    assert torch.allclose(act(x), x)


def test_dcu_keeps_size_on_odd_non_square_input_and_learns():
    torch.manual_seed(0)
    unit = DCU(1, 8, activation="prelu")
    x = torch.randn(2, 1, 13, 7)
    z = torch.zeros(2, 8, 13, 7)
    out = unit(x, z)
    assert out.shape == (2, 8, 13, 7)
    out.abs().mean().backward()
    assert unit.encode[1].weight.grad is not None
    assert unit.encode[1].weight.grad.abs().sum() > 0


def test_dcu_is_a_fixed_point_when_codes_reconstruct_the_signal():
    # With a perfect reconstruction the residual is zero, so (no BN, identity-like
    # activation) the unit returns its codes unchanged.
    unit = DCU(1, 1, activation="sst", batch_norm=False)
    with torch.no_grad():
        unit.decode[1].weight.zero_()
        unit.decode[1].weight[0, 0, 1, 1] = 1.0
        unit.act.theta.zero_()
    x = torch.randn(1, 1, 6, 6)
    assert torch.allclose(unit(x, x.clone()), x, atol=1e-6)


def test_unknown_activation_is_refused():
    import pytest

    with pytest.raises(ValueError, match="activation"):
        make_activation("relu6", 4)
