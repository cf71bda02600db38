"""An optimizer of its own: signSGD, a real torch.optim.Optimizer, so schedulers and checkpoints treat it as any."""

import torch


class SignSGD(torch.optim.Optimizer):
    """w -= lr * sign(grad): every weight moves by lr, whatever the size of its gradient."""

    def __init__(self, params, lr: float = 0.001):
        if lr <= 0:
            raise ValueError(f"lr={lr}: expected a positive number")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss
