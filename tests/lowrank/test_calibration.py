"""Data-aware decomposition and BN re-estimation (lrdlab.lowrank.calibration)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lrdlab
from lrdlab.lowrank.calibration import (
    add_ridge,
    calibrated_decompose,
    calibrated_layer,
    calibration_batches,
    channel_covariance,
    forward_order,
    input_covariance,
    layer_inputs,
    output_error,
    recalibrate_bn,
    reduced_rank_regression,
    sequential_unit,
    whitened_tucker2,
)
from lrdlab.lowrank.layers import decompose_layer, describe, full_ranks
from lrdlab.zoo.cifar_models import vit_tiny


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2, a 1×1 conv and a linear head: every decomposition method appears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 10, 1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def _model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    m = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics, so stale ones matter
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _batches(n: int = 3, size: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 8, 8, generator=g) for _ in range(n)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


# --- recalibrate_bn ----------------------------------------------------------------------------------------


def test_recalibrate_bn_gives_the_exact_statistics_of_every_bn():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 3, 6, 6, generator=g) * 3 + 1, torch.randn(9, 3, 6, 6, generator=g) - 2]  # unequal batches
    recalibrate_bn(model, [(x, torch.zeros(len(x))) for x in xs])
    bn0, conv, _, bn1 = model
    every = torch.cat(xs)
    torch.testing.assert_close(bn0.running_mean, every.mean((0, 2, 3)))
    torch.testing.assert_close(bn0.running_var, every.var((0, 2, 3), unbiased=True))
    # the second BN sees the first one's output, normalised by each batch's own statistics (as in training)
    inner = torch.cat([F.relu(conv(F.batch_norm(x, None, None, bn0.weight, bn0.bias, training=True))) for x in xs])
    torch.testing.assert_close(bn1.running_mean, inner.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn1.running_var, inner.var((0, 2, 3), unbiased=True), atol=1e-5, rtol=1e-5)
    assert not model.training and not any(m.training for m in model.modules())


def test_recalibrate_bn_accepts_tensors_or_pairs_and_leaves_eval_mode():
    a, b = _model(), _model()
    a.train()
    xs = _batches()
    recalibrate_bn(a, xs)
    recalibrate_bn(b, [(x, torch.zeros(len(x), dtype=torch.long)) for x in xs])
    assert not a.training
    torch.testing.assert_close(a.bn2.running_var, b.bn2.running_var)
    assert a.bn1.weight.grad is None


def test_recalibrate_bn_without_batchnorm_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).train()
    before = _state(model)
    assert recalibrate_bn(model, [torch.randn(6, 4)]) is model
    assert _same_state(model, before) and not model.training


# --- the maths ---------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(S=st.integers(2, 12), D=st.integers(2, 12), n=st.integers(1, 40), seed=st.integers(0, 10_000),
       data=st.data())
def test_data_aware_svd_error_never_exceeds_weight_only(S, D, n, seed, data):
    rank = data.draw(st.integers(1, min(S, D)))
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(S, D, generator=g, dtype=torch.float64)
    X = torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = X.T @ X / n  # possibly singular (n < D): the ridge keeps the Cholesky factor defined
    first, last = reduced_rank_regression(W, add_ridge(cov), rank)
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    weight_only = U[:, :rank] * s[:rank] @ Vh[:rank]
    data_aware = output_error(W, last @ first, cov)
    assert data_aware <= output_error(W, weight_only, cov) * (1 + 1e-9) + 1e-9
    assert torch.linalg.matrix_rank(last @ first) <= rank


def test_data_aware_linear_layer_beats_weight_only_on_its_calibration_outputs():
    torch.manual_seed(0)
    layer = nn.Linear(16, 12)
    x = torch.randn(256, 4) @ torch.randn(4, 16) + 0.05 * torch.randn(256, 16)  # inputs near a 4-D subspace
    cov = x.T.double() @ x.double() / len(x)
    data_aware = calibrated_layer(layer, "svd", (3,), cov)
    weight_only = decompose_layer(layer, "svd", (3,))
    err = lambda m: float((m(x) - layer(x)).detach().pow(2).mean())  # noqa: E731
    assert err(data_aware) < 0.5 * err(weight_only)


@pytest.mark.parametrize("make, method", [
    (lambda: nn.Linear(7, 5), "svd"),
    (lambda: nn.Conv2d(6, 5, 1, stride=2, bias=True), "svd"),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, bias=True), "tucker2"),
    (lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=False), "channel_svd"),
    (lambda: nn.Conv2d(5, 3, 3, padding=2, dilation=2, padding_mode="reflect"), "tucker2"),
])
def test_full_rank_with_calibration_reproduces_the_layer(make, method):
    torch.manual_seed(0)
    layer = make()
    shape = (8, 7) if isinstance(layer, nn.Linear) else (4, layer.in_channels, 9, 9)
    x = torch.relu(torch.randn(shape))
    model = nn.Sequential(layer)
    cov = input_covariance(model, layer, [x])
    low = calibrated_layer(layer, method, tuple(full_ranks(describe(layer), method)), cov)
    torch.testing.assert_close(low(x), layer(x), atol=1e-4, rtol=1e-4)


def test_layer_inputs_are_the_rows_the_weight_multiplies():
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=False)
    x = torch.randn(2, 3, 7, 7)
    rows = layer_inputs(conv, x)
    y = conv(x).permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(rows @ conv.weight.reshape(4, -1).T, y, atol=1e-5, rtol=1e-5)


def test_whitened_tucker2_with_white_inputs_matches_weight_only_at_full_input_rank():
    torch.manual_seed(0)
    W = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    cov = torch.eye(36, dtype=torch.float64)
    first, core, last = whitened_tucker2(W, cov, 4, 6)
    approx = torch.einsum("abij,sa,bc->scij", core, last, first)
    torch.testing.assert_close(approx, W)
    assert channel_covariance(cov, 4).shape == (4, 4)


# --- whole models ------------------------------------------------------------------------------------------


def test_calibrated_decompose_at_full_rank_reproduces_the_model_and_never_modifies_it():
    model = _model()
    plan = lrdlab.make_plan(model, lrdlab.FixedRank("full", allow_larger=True))
    before = _state(model)
    out = calibrated_decompose(model, plan, _batches(), bn=False)
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(out(x), model(x), atol=1e-4, rtol=1e-4)
    assert _same_state(model, before)
    assert sum(isinstance(m, lrdlab.LowRankLayer) for m in out.modules()) == 4


def test_decompose_with_calibration_is_data_aware_and_the_default_stays_weight_only():
    model = _model()
    model.train()
    before = _state(model)
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2.5, min_rank=1))
    xs = _batches()
    weights = lrdlab.decompose(model, plan)
    calibrated = lrdlab.decompose(model, plan, calibration=[(x, torch.zeros(len(x))) for x in xs])
    assert _same_state(model, before) and model.training  # the original is never modified
    assert not calibrated.training
    x = torch.cat(xs)
    with torch.no_grad():
        model.eval()
        target = model(x)
        err_w = float((weights.eval()(x) - target).pow(2).mean())
        err_c = float((calibrated(x) - target).pow(2).mean())
    assert err_c < err_w
    # weight-only is what decompose has always done: the SVD / HOSVD factors, BN untouched
    assert torch.equal(weights.bn1.running_mean, model.bn1.running_mean)
    assert not torch.equal(calibrated.bn1.running_mean, model.bn1.running_mean)


def test_layers_are_fitted_in_forward_order_on_the_decomposed_network():
    model = _model()
    names = ["fc", "conv3", "conv1", "conv2"]
    assert forward_order(model, names, torch.randn(2, 3, 8, 8)) == ["conv1", "conv2", "conv3", "fc"]


def test_inplace_calibration_changes_the_model_itself():
    model = _model()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1))
    out = calibrated_decompose(model, plan, _batches(), inplace=True)
    assert out is model and isinstance(model.conv2, lrdlab.LowRankLayer)


def test_calibration_batches_takes_the_first_images():
    loader = [(torch.randn(5, 3, 8, 8), torch.zeros(5)) for _ in range(4)]
    got = calibration_batches(loader, 12)
    assert [len(x) for x in got] == [5, 5, 2]


# --- bad input ---------------------------------------------------------------------------------------------


BAD = {
    "channels": lambda: [torch.randn(4, 1, 8, 8)],
    "rank": lambda: [torch.randn(4, 3, 8)],
    "dtype": lambda: [torch.randn(4, 3, 8, 8, dtype=torch.float64)],
    "integers": lambda: [torch.zeros(4, 3, 8, 8, dtype=torch.uint8)],
    "empty": lambda: [],
    "empty iterator": lambda: iter(()),
    "device": lambda: [torch.randn(4, 3, 8, 8, device="meta")],
    "mixed shapes": lambda: [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 6, 6)],
    "not a tensor": lambda: [[[1.0, 2.0]]],
    "one tensor": lambda: torch.randn(4, 3, 8, 8),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_calibration_input_is_a_value_error_naming_the_shape_and_the_model_is_untouched(case):
    model = _model()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1))
    before = _state(model)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        lrdlab.decompose(model, plan, calibration=BAD[case]())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        recalibrate_bn(model, BAD[case]())
    assert _same_state(model, before)
    assert not isinstance(model.conv2, lrdlab.LowRankLayer)


def test_wrong_image_size_for_a_registered_model_names_its_input_shape():
    model = lrdlab.get_model("vit_tiny", num_classes=10).eval()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2), lrdlab.Layers(include=["encoder.layers.encoder_layer_0.*"]),
                            model_name="vit_tiny")
    before = _state(model)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        lrdlab.decompose(model, plan, calibration=[torch.randn(2, 3, 28, 28)])
    assert _same_state(model, before)


def test_copy_of_batches_is_not_needed_twice():
    """A one-shot iterator (e.g. a generator) is read once and still used for every layer and BN."""
    model = _model()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1))
    xs = _batches()
    a = calibrated_decompose(model, plan, (x for x in xs))
    b = calibrated_decompose(copy.deepcopy(model), plan, xs)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(a(x), b(x))


def test_cached_blockwise_inputs_give_the_same_result_as_whole_network_runs(monkeypatch):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 5)).eval()
    plan = lrdlab.make_plan(seq, lrdlab.Ratio(2, min_rank=1))
    xs = _batches()
    cached = calibrated_decompose(seq, plan, xs)
    real = lrdlab.lowrank.calibration.probe

    def no_chains(*args):
        got = real(*args)
        assert got.chains[""] == tuple(str(i) for i in range(8))  # the Sequential is one chain
        got.chains.clear()
        return got

    monkeypatch.setattr("lrdlab.lowrank.calibration.probe", no_chains)
    whole = calibrated_decompose(seq, plan, xs)
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(cached(x), whole(x), atol=1e-5, rtol=1e-5)


def test_a_small_vit_calibrates_block_by_block_and_reproduces_itself_at_full_rank():
    torch.manual_seed(0)
    vit = vit_tiny(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                   mlp_dim=32).eval()
    nn.init.normal_(vit.heads.head.weight)
    assert sequential_unit(vit, "encoder.layers.encoder_layer_1.mlp.0") == "encoder.layers"
    plan = lrdlab.make_plan(vit, lrdlab.FixedRank("full", allow_larger=True))
    out = lrdlab.decompose(vit, plan, calibration=_batches())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(out(x), vit(x), atol=1e-4, rtol=1e-4)
    assert isinstance(out.encoder.layers.encoder_layer_1.mlp[3], lrdlab.LowRankLayer)


def test_attention_projections_are_fitted_to_their_own_inputs():
    """q/k/v/out get the data-aware fit too (not weight-only): each one's output error on the calibration data is
    at most weight-only's, and the factorized attention is the same module type decompose() builds."""
    from lrdlab.lowrank.attention import FactorizedMultiheadAttention, unfuse

    torch.manual_seed(0)
    vit = vit_tiny(image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    plan = lrdlab.make_plan(vit, lrdlab.Ratio(2, min_rank=1), lrdlab.Layers(include=["*self_attention*"]))
    batches = _batches()
    fitted = unfuse(lrdlab.decompose(vit, plan, calibration=batches))
    plain = unfuse(lrdlab.decompose(vit, plan))
    dense = unfuse(copy.deepcopy(vit))
    attn = "encoder.layers.encoder_layer_0.self_attention"
    assert isinstance(fitted.get_submodule(attn), FactorizedMultiheadAttention)
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        name = f"{attn}.{proj}"
        seen: list[torch.Tensor] = []
        handle = dense.get_submodule(name).register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        with torch.no_grad():
            for x in batches:
                dense(x)
        handle.remove()
        X = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])
        with torch.no_grad():
            y = dense.get_submodule(name)(X)
            errs = [(net.get_submodule(name)(X) - y).norm() for net in (fitted, plain)]
        assert errs[0] < errs[1], f"{proj}: data-aware {errs[0]:.4g}, weight-only {errs[1]:.4g}"


# --- upstream correction and robustness --------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(S=st.integers(2, 10), D=st.integers(2, 10), n=st.integers(1, 40), seed=st.integers(0, 10_000),
       data=st.data())
def test_corrected_objective_is_never_worse_than_weight_only_on_its_own_data(S, D, n, seed, data):
    """‖W X − M X̂‖² + λ‖M − W‖², the corrected fit's objective, is at most weight-only SVD's at the same rank."""
    from lrdlab.lowrank.data_aware import corrected_weight

    rank = data.draw(st.integers(1, min(S, D)))
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(S, D, generator=g, dtype=torch.float64)
    X = torch.randn(n, D, generator=g, dtype=torch.float64)
    X_hat = X + 0.5 * torch.randn(n, D, generator=g, dtype=torch.float64)  # the upstream layers' error
    target, cov = corrected_weight(W, X_hat.T @ X_hat / n, X.T @ X_hat / n)
    first, last = reduced_rank_regression(target, cov, rank)
    lam = float(cov[0, 0] - (X_hat.T @ X_hat / n)[0, 0])

    def objective(M):
        return float((X @ W.T - X_hat @ M.T).pow(2).sum() / n + lam * (M - W).pow(2).sum())

    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    assert objective(last @ first) <= objective(U[:, :rank] * s[:rank] @ Vh[:rank]) * (1 + 1e-9) + 1e-9


def test_upstream_correction_beats_the_sequential_fit_after_a_badly_truncated_first_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 8)).eval()
    plan = lrdlab.make_plan(net, lrdlab.FixedRank({"0": 2, "2": 24, "4": 8}, allow_larger=True))
    xs = [torch.randn(64, 16) @ torch.randn(16, 16) for _ in range(4)]
    x = torch.cat(xs)
    with torch.no_grad():
        errors = {mode: float((calibrated_decompose(net, plan, xs, mode=mode)(x) - net(x)).pow(2).mean())
                  for mode in ("sequential", "corrected", "one-shot")}
    assert errors["corrected"] < 0.8 * errors["sequential"], errors
    assert errors["corrected"] < errors["one-shot"], errors


def test_calibration_modes_are_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        calibrated_decompose(_model(), lrdlab.make_plan(_model(), lrdlab.Ratio(2)), _batches(), mode="svd-llm")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_batches_are_a_value_error_naming_the_batch(bad):
    xs = _batches()
    xs[1][0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="calibration batch 1 holds NaN or infinite"):
        calibrated_decompose(_model(), lrdlab.make_plan(_model(), lrdlab.Ratio(2)), xs)


def test_a_layer_that_never_runs_is_named_with_the_exclude_fix():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux1 = _model(), nn.Sequential(nn.Linear(5, 5))

        def forward(self, x):
            return self.body(x) if not self.training else self.aux1(self.body(x))

    model = WithAux().eval()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1))
    with pytest.raises(ValueError, match=r"\['aux1.0'\] never ran.*exclude=\['aux1\.\*'\]"):
        calibrated_decompose(model, plan, _batches())


def test_too_few_calibration_rows_warn_with_the_layer_and_the_images_needed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    plan = lrdlab.make_plan(net, lrdlab.Ratio(2, min_rank=1))
    with pytest.warns(UserWarning, match=r"layer '0' has 64-dimensional inputs.*only 8 rows.*at least 64"):
        out = calibrated_decompose(net, plan, [torch.randn(8, 64)])
    assert torch.isfinite(out(torch.randn(3, 64))).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_models_calibrate_with_float64_statistics(dtype):
    model = _model().to(dtype)
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1))
    xs = [x.to(dtype) for x in _batches()]
    out = calibrated_decompose(model, plan, xs)
    layers = [m for m in out.modules() if isinstance(m, lrdlab.LowRankLayer)]
    assert layers and all(p.dtype == dtype for m in layers for p in m.parameters())
    assert torch.isfinite(out(xs[0]).float()).all()


def test_input_gram_is_float64_for_low_precision_inputs():
    from lrdlab.lowrank.data_aware import input_gram

    x = torch.randn(4, 300) * 100
    gram, rows = input_gram(nn.Linear(300, 2), x.bfloat16())
    exact = x.bfloat16().double().T @ x.bfloat16().double()
    assert gram.dtype == torch.float64 and rows == 4
    torch.testing.assert_close(gram, exact, rtol=1e-12, atol=1e-9)
