"""Oracle tests: every hand-written piece against its torch twin."""

import pytest
import torch
import torch.nn.functional as F

from task1.models import nets, scratch
from task1.models.init import init_linear_


def logits(*shape, scale=3.0, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).requires_grad_()


def test_softmax_matches_torch_and_survives_large_logits():
    X = logits(8, 10)
    torch.testing.assert_close(scratch.softmax(X), torch.softmax(X, dim=1))
    big = torch.tensor([[100.0, -100.0, 0.0], [-100.0, -100.0, -100.0]])
    out = scratch.softmax(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(big, dim=1))
    torch.testing.assert_close(out.sum(1), torch.ones(2))


def test_logsumexp_matches_torch():
    X = logits(5, 7)
    torch.testing.assert_close(scratch.logsumexp(X), torch.logsumexp(X, dim=1))
    big = torch.tensor([[1000.0, 999.0]])
    torch.testing.assert_close(scratch.logsumexp(big), torch.logsumexp(big, dim=1))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_value_and_gradient_match_torch(reduction):
    X1 = logits(16, 10)
    X2 = X1.detach().clone().requires_grad_()
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    ours, theirs = scratch.cross_entropy(X1, y, reduction), F.cross_entropy(X2, y, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(X1.grad, X2.grad)


def test_cross_entropy_is_finite_for_logits_of_plus_minus_100():
    X = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 0.0]], requires_grad=True)
    y = torch.tensor([1, 1])  # first row: the right class has logit -100, loss 200
    loss = scratch.cross_entropy(X, y, "none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, F.cross_entropy(X, y, reduction="none"))
    loss.sum().backward()
    assert torch.isfinite(X.grad).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_squared_loss_is_half_of_mse(reduction):
    y_hat, y = logits(20, 1), torch.randn(20)
    torch.testing.assert_close(scratch.squared_loss(y_hat, y, reduction),
                               F.mse_loss(y_hat, y.reshape(-1, 1), reduction=reduction) / 2)
    torch.testing.assert_close(nets.squared_loss(y_hat, y, reduction),
                               F.mse_loss(y_hat, y.reshape(-1, 1), reduction=reduction))


def test_relu_matches_torch():
    X = logits(4, 6)
    torch.testing.assert_close(scratch.relu(X), torch.relu(X))


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        scratch.cross_entropy(logits(2, 3), torch.tensor([0, 1]), "avg")


def _copy_to_torch(scratch_net, torch_net):
    """nn.Linear keeps W transposed: weight = W.T."""
    linears = [m for m in torch_net.modules() if isinstance(m, torch.nn.Linear)]
    params = list(scratch_net.parameters())
    with torch.no_grad():
        for layer, (W, b) in zip(linears, zip(params[::2], params[1::2], strict=True), strict=True):
            layer.weight.copy_(W.T)
            layer.bias.copy_(b.reshape(-1))


@pytest.mark.parametrize("name, shape, kwargs", [
    ("LinearRegression", (5, 2), {"num_inputs": 2}),
    ("SoftmaxRegression", (5, 1, 28, 28), {}),
    ("MLP", (5, 1, 28, 28), {"num_hiddens": 32}),
])
def test_scratch_nets_compute_what_their_torch_twins_compute(name, shape, kwargs):
    ours, theirs = getattr(scratch, name)(**kwargs), getattr(nets, name)(**kwargs)
    _copy_to_torch(ours, theirs)
    X = torch.rand(*shape)
    torch.testing.assert_close(ours(X), theirs(X))
    assert len(ours.state_dict()) == len(theirs.state_dict())  # parameters are real nn.Parameters


def test_linear_regression_get_w_b_agree():
    ours, theirs = scratch.LinearRegression(), nets.LinearRegression()
    _copy_to_torch(ours, theirs)
    for a, b in zip(ours.get_w_b(), theirs.get_w_b(), strict=True):
        torch.testing.assert_close(a, b)


def test_init_normal_zeros_and_default():
    torch.manual_seed(0)
    W, b = torch.empty(784, 256), torch.empty(256)
    init_linear_(W, b, 784, 0.01, "zeros")
    assert abs(W.std().item() - 0.01) < 5e-4 and abs(W.mean().item()) < 5e-4
    assert torch.all(b == 0)
    init_linear_(W, b, 784, 0.01, "normal")
    assert abs(b.std().item() - 0.01) < 3e-3 and b.abs().max() > 0
    init_linear_(W, b, 784, None, "default")
    bound = 1 / 784 ** 0.5
    assert W.abs().max() <= bound and W.abs().max() > 0.9 * bound and b.abs().max() <= bound
    with pytest.raises(ValueError, match="bias_init"):
        init_linear_(W, b, 784, 0.01, "ones")


def test_default_init_matches_nn_linear():
    """init_std=None draws what nn.Linear's own init draws from the same random state."""
    torch.manual_seed(3)
    reference = torch.nn.Linear(50, 20)
    torch.manual_seed(3)
    W, b = torch.empty(20, 50), torch.empty(20)
    init_linear_(W, b, 50, None, "default")
    torch.testing.assert_close(W, reference.weight.detach())
    torch.testing.assert_close(b, reference.bias.detach())
