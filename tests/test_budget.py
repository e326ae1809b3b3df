"""Equal parameter budgets (the head excluded), anchored on DePT's own rule."""

import pytest
import torch

from ept_fast import EPTConfig, EPTPromptEncoder
from ept_fast.budget import adapter_parameters, fit_budget


def _encoder_count(config, d):
    return EPTPromptEncoder(config, word_embeddings=torch.zeros(10, d)).num_trainable_parameters()


@pytest.mark.parametrize("config", [
    EPTConfig(num_virtual_tokens=20, max_length=128, r=8, num_spaces=4, space_rank=8, prompt_init="RANDOM"),
    EPTConfig(method="dept", num_virtual_tokens=60, max_length=256, r=30, prompt_init="RANDOM"),
    EPTConfig(method="pt", num_virtual_tokens=100, prompt_init="RANDOM"),
], ids=["ept", "dept", "pt"])
def test_the_count_is_the_encoders_trainable_parameters(config):
    assert adapter_parameters(config, 48) == _encoder_count(config, 48)


def test_depts_rule_t5_base_pt_100_equals_dept_60_30():
    pt = EPTConfig(method="pt", num_virtual_tokens=100, prompt_init="RANDOM")
    assert adapter_parameters(pt, 768) == 76_800
    dept = fit_budget(EPTConfig(method="dept", num_virtual_tokens=60, max_length=256, prompt_init="RANDOM"),
                      76_800, 768)
    assert (dept.num_virtual_tokens, dept.r, dept.max_length) == (60, 30, 256)
    assert adapter_parameters(dept, 768) == 76_800
    assert fit_budget(EPTConfig(method="pt", prompt_init="RANDOM"), 76_800, 768).num_virtual_tokens == 100


def test_each_method_spends_at_most_the_budget_as_closely_as_it_can():
    budget, d = 37_893, 384  # EPT at the command line's defaults on MiniLM
    ept = EPTConfig(num_virtual_tokens=20, max_length=128, r=8, num_spaces=4, space_rank=8, prompt_init="RANDOM")
    assert adapter_parameters(ept, d) == budget
    for method in ("ept", "dept", "pt"):
        fields = dict(num_spaces=4) if method == "ept" else {}
        config = fit_budget(EPTConfig(method=method, num_virtual_tokens=20, max_length=128, prompt_init="RANDOM",
                                      **fields), budget, d)
        spent = adapter_parameters(config, d)
        step = d if method == "pt" else config.max_length + d  # one more m, or one more r
        assert budget - step < spent <= budget, (method, spent)
    assert fit_budget(EPTConfig(method="dept", num_virtual_tokens=20, max_length=128, prompt_init="RANDOM"),
                      budget, d).r == 59


def test_ept_lowers_h_only_when_r_would_not_fit():
    config = EPTConfig(num_virtual_tokens=4, max_length=16, num_spaces=4, space_rank=8, prompt_init="RANDOM")
    small = fit_budget(config, 4 * 32 + 1 + 4 * (2 * 32 * 3 + 32 + 1) + 48, 32)  # room for h = 3 and r = 1
    assert (small.space_rank, small.r) == (3, 1)
    with pytest.raises(ValueError, match=r"param_budget: 100 parameters cannot hold method='ept' with "
                                         r"num_virtual_tokens=4 and r >= 1"):
        fit_budget(config, 100, 32)
    with pytest.raises(ValueError, match=r"param_budget: expected a positive number of parameters, got 0"):
        fit_budget(config, 0, 32)
