"""Initialisation shared by the torch.nn and scratch nets, so both start from the same distribution."""

import math

import torch

BIAS_INITS = ("zeros", "normal", "default")


@torch.no_grad()
def init_linear_(weight: torch.Tensor, bias: torch.Tensor, fan_in: int, init_std: float | None,
                 bias_init: str) -> None:
    """Weights ~ N(0, init_std) as d2l does, or torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) when None.

    `bias_init`: "zeros" (d2l 3.2-3.9), "normal" (same N(0, init_std) as the weights, d2l 3.10) or "default"
    (torch's uniform, d2l-zh 2.0's concise models).
    """
    if bias_init not in BIAS_INITS:
        raise ValueError(f"bias_init={bias_init!r}: expected one of {', '.join(BIAS_INITS)}")
    bound = 1 / math.sqrt(fan_in)
    if init_std is None:
        weight.uniform_(-bound, bound)  # what nn.Linear's kaiming_uniform_(a=sqrt(5)) amounts to
    else:
        weight.normal_(0, init_std)
    if bias_init == "zeros":
        bias.zero_()
    elif bias_init == "normal":
        bias.normal_(0, init_std if init_std is not None else bound)
    else:
        bias.uniform_(-bound, bound)
