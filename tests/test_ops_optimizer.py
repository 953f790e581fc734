"""The optimizer step's fast paths: torch's fused Adam(W) (kept on after a checkpoint load) and
the _foreach_ replacements of megatron-core's grad-norm and copy/scale fallbacks, which must
compute what the fallbacks compute."""
import inspect

import pytest
import torch
from megatron.core import utils as mcore_utils

from modellink.patches import apply_patches
from modellink.patches.multi_tensor import foreach_l2_norm, foreach_scale
from modellink.training.components import use_fused_adam


def _tensors(seed: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in ((64, 48), (48,), (7, 3, 5))]


def _adamw(params, **kwargs):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **kwargs)


def _train(optimizer, params, steps, seed):
    for index in range(steps):
        for param, grad in zip(params, _tensors(seed + index)):
            param.grad = grad
        optimizer.step()


def test_fused_adam_matches_the_per_parameter_path_and_survives_a_checkpoint_load():
    fused = [torch.nn.Parameter(t) for t in _tensors(0)]
    plain = [torch.nn.Parameter(t) for t in _tensors(0)]
    fused_opt, plain_opt = _adamw(fused), _adamw(plain, foreach=False)
    use_fused_adam(fused_opt)
    _train(fused_opt, fused, 3, seed=10)
    _train(plain_opt, plain, 3, seed=10)
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)  # rounding only

    # A checkpoint written by the per-parameter path carries its flags and a CPU step.
    fused_opt.load_state_dict(plain_opt.state_dict())
    assert all(group["fused"] and not group["foreach"] for group in fused_opt.param_groups)
    assert all(fused_opt.state[p]["step"].dtype == torch.float32 for p in fused)
    _train(fused_opt, fused, 1, seed=20)
    assert all(fused_opt.state[p]["step"].item() == 4 for p in fused)


def test_fused_adam_leaves_other_optimizers_alone():
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    use_fused_adam(sgd)
    assert sgd.param_groups[0]["foreach"] is None and sgd.param_groups[0]["fused"] is None


def test_megatron_core_fallbacks_keep_the_signatures_the_replacements_take():
    # The patch targets hold apex / TE kernels where installed (not inspectable): check here.
    for fallback, replacement in ((mcore_utils.local_multi_tensor_l2_norm, foreach_l2_norm),
                                  (mcore_utils.local_multi_tensor_scale, foreach_scale)):
        want = list(inspect.signature(fallback).parameters)
        assert list(inspect.signature(replacement).parameters) == want


def test_patches_replace_the_fallbacks_megatron_core_calls():
    apply_patches()
    from megatron.core.optimizer import clip_grads, optimizer

    assert clip_grads.l2_norm_impl is foreach_l2_norm
    assert clip_grads.multi_tensor_scale_impl is foreach_scale
    assert optimizer.multi_tensor_scale_impl is foreach_scale


def test_foreach_l2_norm_is_the_norm_of_the_per_tensor_norms():
    tensors = _tensors(1)
    norm, per_tensor = foreach_l2_norm(2048, None, [tensors], False)
    # The fallback's math (it then builds its result on "cuda", which needs the CPU backend).
    want = torch.norm(torch.tensor([[torch.norm(t) for t in tensors]]))
    assert per_tensor is None and norm.shape == (1,) and torch.equal(norm[0], want)


@pytest.mark.parametrize("scale", [1.0, 0.37])
@pytest.mark.parametrize("dst_dtype", [torch.float32, torch.bfloat16])
def test_foreach_scale_matches_the_fallback(scale, dst_dtype):
    sources = _tensors(2)
    got = [torch.empty_like(t, dtype=dst_dtype) for t in sources]
    want = [torch.empty_like(t, dtype=dst_dtype) for t in sources]
    foreach_scale(2048, None, [sources, got], scale)
    mcore_utils.local_multi_tensor_scale(2048, None, [sources, want], scale)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_foreach_scale_in_place_as_clipping_calls_it():
    grads, want = _tensors(3), _tensors(3)
    foreach_scale(2048, None, [grads, grads], 0.5)
    mcore_utils.local_multi_tensor_scale(2048, None, [want, want], 0.5)
    assert all(torch.equal(g, w) for g, w in zip(grads, want))
