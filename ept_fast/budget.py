"""Equal parameter budgets: how many parameters an adapter trains, and the sizes that make a
method spend a given number. The classification head, which every method trains alike, is
left out of both.

DePT's own rule is the anchor: on T5-base (d = 768), prompt tuning with m = 100 trains
76,800 parameters, and so does DePT with m = 60, r = 30, n = 256 (60·768 + 30·(256 + 768)).
"""

from __future__ import annotations

import dataclasses

from .config import EPTConfig, Method


def adapter_parameters(config: EPTConfig, token_dim: int) -> int:
    """Trainable parameters of an adapter with ``config`` on a backbone of hidden size
    ``token_dim`` (the head excluded): P, A, B, λ (EPT only), the K projections and the gate."""
    m, n, r, K, h, d = config.num_virtual_tokens, config.max_length, config.r, config.num_spaces, config.space_rank, \
        token_dim
    return m * d + n * r + r * d + int(config.trains_fusion) + K * 2 * d * h + d * K + K


def fit_budget(config: EPTConfig, budget: int, token_dim: int) -> EPTConfig:
    """``config`` resized to train at most ``budget`` parameters, as many as it can: prompt
    tuning picks m; DePT picks r at its m and n; EPT picks r at its m, n, K and h, and lowers h
    as well when not even r = 1 would fit."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"param_budget: expected a positive number of parameters, got {budget!r}")
    d = token_dim
    if config.method is Method.HEAD:
        raise ValueError("param_budget: method 'head' trains the head alone, no adapter parameters to size")
    if config.method is Method.PT:
        m = budget // d
        if m < 1:
            raise ValueError(f"param_budget: {budget} parameters cannot hold one prompt row of d={d}")
        return dataclasses.replace(config, num_virtual_tokens=m)
    for h in range(config.space_rank, 0, -1):
        fixed = adapter_parameters(dataclasses.replace(config, r=0, space_rank=h), d)
        r = (budget - fixed) // (config.max_length + d)
        if r >= 1 or config.num_spaces == 0:
            break
    if r < 1:
        raise ValueError(
            f"param_budget: {budget} parameters cannot hold method={config.method.value!r} with "
            f"num_virtual_tokens={config.num_virtual_tokens} and r >= 1 ({fixed} parameters before the low-rank "
            f"pair); give a larger budget or a smaller num_virtual_tokens"
        )
    if r > min(config.max_length, d):
        raise ValueError(
            f"param_budget: {budget} parameters would make r={r}, past min(max_length, d)="
            f"{min(config.max_length, d)} (a rank past that adds nothing); give a smaller budget or a larger "
            f"num_virtual_tokens"
        )
    return dataclasses.replace(config, r=r, space_rank=h)
