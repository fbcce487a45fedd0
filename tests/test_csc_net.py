import pytest
import torch

from napari_fusion.nets.csc import DCU, SoftShrink, dcus_can_run_fast, make_activation, run_dcus


def _units(signal_channels, code_channels, activation, *, n=3, batch_norm=True, seed=0):
    """Eval-mode DCUs with non-trivial batch-norm statistics, thresholds and slopes."""
    torch.manual_seed(seed)
    units = [DCU(signal_channels, code_channels, activation=activation, batch_norm=batch_norm).eval() for _ in range(n)]
    with torch.no_grad():
        for u in units:
            if batch_norm:
                u.norm.running_mean.normal_()
                u.norm.running_var.uniform_(0.5, 2.0)
                u.norm.weight.normal_()
                u.norm.bias.normal_()
            if activation == "sst":
                u.act.theta.uniform_(0.0, 0.5)
            else:
                u.act.weight.uniform_(-0.5, 0.5)
    return units


@pytest.mark.parametrize("activation", ["sst", "prelu"])
@pytest.mark.parametrize("signal_channels", [1, 4])
@pytest.mark.parametrize("shape", [(2, 37, 53), (1, 2, 5), (1, 6, 2)], ids=["odd", "two-rows", "two-cols"])
@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no-bn"])
def test_run_dcus_inference_path_equals_the_modules(activation, signal_channels, shape, batch_norm):
    """The matrix-product path (reflection borders, folded batch norm, in-place activations)
    gives the modules' result, for different signals per unit and given or zero codes."""
    b, h, w = shape
    units = _units(signal_channels, 8, activation, batch_norm=batch_norm)
    signals = [torch.rand(b, signal_channels, h, w) for _ in units]
    for z0 in (torch.randn(b, 8, h, w), None):
        with torch.no_grad():
            assert dcus_can_run_fast(units, signals[0])
            ref = torch.zeros(b, 8, h, w) if z0 is None else z0
            for unit, x in zip(units, signals):
                ref = unit(x, ref)
            got = run_dcus(units, signals, z0)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        if z0 is not None:
            assert not torch.equal(got, z0)  # codes were refined, the input codes untouched
            assert got.data_ptr() != z0.data_ptr()


def test_run_dcus_trains_through_the_modules():
    """With autograd recording (training), the modules run and gradients reach every unit."""
    units = _units(1, 4, "sst")
    x = torch.rand(1, 1, 9, 9)
    assert not dcus_can_run_fast(units, x)
    run_dcus(units, [x] * 3, None).abs().mean().backward()
    assert all(u.encode[1].weight.grad is not None for u in units)
    with torch.no_grad():
        assert not dcus_can_run_fast([u.train() for u in units], x)  # batch statistics
        assert not dcus_can_run_fast([u.eval() for u in units], torch.rand(1, 1, 1, 9))  # no reflection
        assert not dcus_can_run_fast(_units(31, 4, "sst"), torch.rand(1, 31, 9, 9))  # many bands: convolutions


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
