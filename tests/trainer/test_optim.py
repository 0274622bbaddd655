"""StableAdamW against hand-computed steps, AdamW where they must agree, and the parameter groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.model import ModelConfig, ModernBertMLM
from trainer.optim import StableAdamW, debiased_beta, load_named_state, named_state, param_groups

BETAS, EPS, LR, MAX_LR, DECAY = (0.9, 0.95), 1e-8, 1e-2, 2e-2, 0.1


def run(start, gradients, **settings):
    parameter = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = StableAdamW([parameter], **settings)
    for gradient in gradients:
        parameter.grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
    return parameter.detach().numpy(), optimizer


def test_two_steps_match_the_formulas_written_out():
    p0 = np.array([0.5, -1.0, 2.0, 0.0])
    g1 = np.array([0.1, -0.2, 0.3, 0.05])
    g2 = np.array([1.0, 2.0, -3.0, 0.5])  # ten times larger: the RMS clipping of step 2 engages
    got, optimizer = run(p0, [g1, g2], lr=LR, betas=BETAS, eps=EPS, weight_decay=DECAY, max_lr=MAX_LR)

    # step 1: the debiased betas are 0, so m = g1 and v = g1^2; the RMS ratio is 1
    m, v = g1, g1**2
    lr1 = LR / max(1.0, np.sqrt(np.mean(g1**2 / np.maximum(v, EPS**2))))
    assert lr1 == pytest.approx(LR)
    p1 = p0 * (1 - lr1 / MAX_LR * DECAY) - lr1 * m / (np.sqrt(v) + EPS)
    # step 2: betas debiased as 0.9/1.9 and 0.95/1.95 (Adam's bias correction at t = 2)
    b1, b2 = 0.9 / 1.9, 0.95 / 1.95
    m = b1 * m + (1 - b1) * g2
    v = b2 * v + (1 - b2) * g2**2
    rms = np.sqrt(np.mean(g2**2 / np.maximum(v, EPS**2)))
    assert rms > 1.3  # clipped
    lr2 = LR / rms
    p2 = p1 * (1 - lr2 / MAX_LR * DECAY) - lr2 * m / (np.sqrt(v) + EPS)
    np.testing.assert_allclose(got, p2, rtol=1e-12, atol=1e-15)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["step"] == 2
    np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-12)


def test_debiased_betas_are_adams_bias_correction():
    for t in (1, 2, 5, 50):
        ema = [0.0]
        for _ in range(t):
            ema.append(0.9 * ema[-1] + 0.1 * 1.0)
        # an EMA of a constant 1, bias-corrected, is 1; the debiased recursion gives it directly
        corrected, debiased = ema[-1] / (1 - 0.9**t), 0.0
        for step in range(1, t + 1):
            b = debiased_beta(0.9, step)
            debiased = b * debiased + (1 - b) * 1.0
        assert debiased == pytest.approx(corrected) == pytest.approx(1.0)


def test_without_clipping_or_decay_it_is_adamw():
    torch.manual_seed(0)
    start = torch.randn(6, 5)
    gradient = torch.randn(6, 5)  # a constant gradient: v equals g^2, the RMS ratio is 1, no clipping
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(start.clone())
    stable = StableAdamW([ours], lr=1e-3, betas=BETAS, eps=EPS)
    adamw = torch.optim.AdamW([theirs], lr=1e-3, betas=BETAS, eps=EPS, weight_decay=0.0)
    for _ in range(5):
        ours.grad, theirs.grad = gradient.clone(), gradient.clone()
        stable.step()
        adamw.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_weight_decay_spares_norms_and_biases():
    model = ModernBertMLM(ModelConfig.preset("tiny"))
    decayed, spared = param_groups(model, 8e-5)
    assert decayed["weight_decay"] == 8e-5 and spared["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in spared["params"]} == {
        n for n, p in model.named_parameters() if "norm" in n or n.endswith("bias")
    }
    assert "model.embeddings.tok_embeddings.weight" in {names[id(p)] for p in decayed["params"]}
    total = sum(p.numel() for group in (decayed, spared) for p in group["params"])
    assert total == model.num_parameters()  # the tied decoder weight counted once


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="invalid StableAdamW settings"):
        StableAdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 1.0))


def test_named_state_round_trips_by_parameter_name():
    torch.manual_seed(0)
    model = ModernBertMLM(ModelConfig.preset("tiny", vocab_size=128))
    optimizer = StableAdamW(param_groups(model, 0.1), lr=1e-3)
    cu_seqlens = torch.tensor([0, 4], dtype=torch.int32)
    model(torch.tensor([2, 7, 9, 1]), cu_seqlens, 4, torch.tensor([-100, 7, -100, -100])).loss.backward()
    optimizer.step()
    names = {parameter: name for name, parameter in model.named_parameters()}
    tensors, steps = named_state(optimizer, names)
    assert set(steps) == set(names.values()) and set(steps.values()) == {1}
    assert set(tensors) == {f"{name}.{slot}" for name in steps for slot in StableAdamW.SLOTS}
    again = StableAdamW(param_groups(model, 0.1), lr=1e-3)
    load_named_state(again, names, tensors, steps)
    for parameter in names:
        assert again.state[parameter]["step"] == 1
        for slot in StableAdamW.SLOTS:
            assert torch.equal(again.state[parameter][slot], optimizer.state[parameter][slot])
    del steps["model.embeddings.norm.weight"]
    with pytest.raises(KeyError, match="no optimizer state for model.embeddings.norm.weight"):
        load_named_state(again, names, tensors, steps)


def test_the_checkpointer_names_no_optimizer_slot():
    """The optimizer's state is flattened here, so a new optimizer is no change to trainer/checkpoint.py."""
    source = (Path(__file__).resolve().parents[2] / "trainer" / "checkpoint.py").read_text(encoding="utf-8")
    assert not [slot for slot in StableAdamW.SLOTS if slot in source]
