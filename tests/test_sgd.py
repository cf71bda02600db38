"""The hand-written SGD against torch.optim.SGD: exactly equal parameters over every option combination."""

import itertools

import pytest
import torch

from task1.optim import SGD

GRID = [
    dict(weight_decay=wd, momentum=m, dampening=d, nesterov=n)
    for wd, m, d, n in itertools.product([0.0, 0.05], [0.0, 0.5, 0.9], [0.0, 0.3], [False, True])
    if not (n and (m == 0 or d != 0))  # torch refuses nesterov without momentum or with dampening
]


def _run(optimizer_cls, steps=60, lr=0.05, **options):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = optimizer_cls(net.parameters(), lr=lr, **options)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        X, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt


@pytest.mark.parametrize("options", GRID, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("foreach", [False, True])
def test_parameters_equal_torch_sgd_exactly(options, foreach):
    ours, _ = _run(SGD, **options)
    theirs, _ = _run(lambda params, **kw: torch.optim.SGD(params, foreach=foreach, **kw), **options)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b), f"differs by {(a - b).abs().max().item()}"


def test_momentum_buffer_matches_torch_state():
    options = dict(momentum=0.9, dampening=0.1, weight_decay=0.01)
    _, ours = _run(SGD, steps=5, **options)
    _, theirs = _run(torch.optim.SGD, steps=5, **options)
    for p_ours, p_theirs in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"], strict=True):
        assert torch.equal(ours.state[p_ours]["momentum_buffer"], theirs.state[p_theirs]["momentum_buffer"])


@pytest.mark.parametrize("kwargs", [
    dict(lr=-0.1), dict(lr=0.1, momentum=-0.5), dict(lr=0.1, weight_decay=-1.0),
    dict(lr=0.1, nesterov=True), dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
])
def test_arguments_are_validated_as_torch_does(kwargs):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD(params, **kwargs)
    with pytest.raises(ValueError, match=theirs.value.args[0].replace("(", r"\(").replace(")", r"\)")):
        SGD(params, **kwargs)


def test_works_with_a_scheduler_and_state_dict_round_trip():
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = SGD(params, lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(4):
        params[0].grad = torch.ones(3)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    clone = SGD([torch.nn.Parameter(params[0].detach().clone())], lr=1.0, momentum=0.9)
    clone.load_state_dict(opt.state_dict())
    assert torch.equal(next(iter(clone.state.values()))["momentum_buffer"],
                       next(iter(opt.state.values()))["momentum_buffer"])


def test_closure_is_evaluated_and_returned():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = SGD([p], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    assert p.item() == pytest.approx(1.0)  # 2 - 0.25 * 2 * 2
