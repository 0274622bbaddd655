"""Every attention backend against a dense, explicitly masked reference (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from trainer.attention import flash_attn_available, resolve_backend, varlen_attention

# Packed documents shorter than, equal to (128 = local_attention, 129 = the full +-64 span)
# and longer than ModernBERT's window, plus a one-token document.
LENGTHS = [50, 128, 1, 129, 300, 64]
WINDOWS = [None, 64, 3]
HEADS, HEAD_DIM = 3, 16

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_flash = pytest.mark.skipif(
    not (torch.cuda.is_available() and flash_attn_available()),
    reason="needs a CUDA GPU" if not torch.cuda.is_available() else "needs the flash-attn package",
)


def packed(lengths=LENGTHS, device="cpu", dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, HEADS, HEAD_DIM, generator=generator).to(device, dtype) for _ in range(3))
    cu_seqlens = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    return q, k, v, cu_seqlens, max(lengths)


def reference(q, k, v, cu_seqlens, window):
    """Softmax over an explicit [T, T] mask: same document and, for local layers, |i - j| <= window."""
    total = q.shape[0]
    allowed = torch.zeros(total, total, dtype=torch.bool, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        allowed[start:end, start:end] = True
    if window is not None:
        position = torch.arange(total, device=q.device)
        allowed &= (position[:, None] - position[None, :]).abs() <= window
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / HEAD_DIM**0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", weights, v.float())


def forward_and_grads(function, q, k, v, upstream):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = function(q, k, v)
    (out.float() * upstream).sum().backward()
    return out.detach().float(), [x.grad.float() for x in (q, k, v)]


def check_against_reference(backend, window, device, dtype, atol):
    q, k, v, cu_seqlens, max_seqlen = packed(device=device, dtype=dtype)
    upstream = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device)
    out, grads = forward_and_grads(
        lambda q, k, v: varlen_attention(q, k, v, cu_seqlens, max_seqlen, window, backend), q, k, v, upstream
    )
    expected, expected_grads = forward_and_grads(
        lambda q, k, v: reference(q, k, v, cu_seqlens, window), q, k, v, upstream
    )
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=atol, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=atol, rtol=0)


def test_reference_masks_differ():
    """The window and document boundaries change the result, so the comparisons below can fail."""
    q, k, v, cu_seqlens, _ = packed()
    single = torch.tensor([0, q.shape[0]], dtype=torch.int32)
    assert not torch.allclose(reference(q, k, v, cu_seqlens, None), reference(q, k, v, cu_seqlens, 64))
    assert not torch.allclose(reference(q, k, v, cu_seqlens, None), reference(q, k, v, single, None))


@pytest.mark.parametrize("window", WINDOWS)
def test_sdpa_matches_reference(window):
    check_against_reference("sdpa", window, "cpu", torch.float32, atol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", WINDOWS)
def test_flex_forward_matches_reference_on_cpu(window):
    """FlexAttention has no CPU backward; its document/window block mask is still checked here."""
    q, k, v, cu_seqlens, max_seqlen = packed()
    with torch.no_grad():
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, window, "flex")
    torch.testing.assert_close(out, reference(q, k, v, cu_seqlens, window), atol=1e-5, rtol=0)


@needs_cuda
@pytest.mark.parametrize("window", WINDOWS)
def test_flex_matches_reference_on_gpu(window):
    torch.backends.cuda.matmul.allow_tf32 = False
    check_against_reference("flex", window, "cuda", torch.float32, atol=1e-4)


@needs_flash
@pytest.mark.parametrize("window", WINDOWS)
def test_flash_matches_reference_on_gpu(window):
    """flash-attn only computes in bf16/fp16; the reference runs in fp32 on the same bf16 inputs."""
    check_against_reference("flash", window, "cuda", torch.bfloat16, atol=3e-2)


def test_sdpa_never_crosses_documents():
    q, k, v, cu_seqlens, max_seqlen = packed()
    start, end = cu_seqlens[3].item(), cu_seqlens[4].item()  # the 129-token document
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[start:end] += 5.0
    changed_v[start:end] -= 5.0
    before = varlen_attention(q, k, v, cu_seqlens, max_seqlen, 64, "sdpa")
    after = varlen_attention(q, changed_k, changed_v, cu_seqlens, max_seqlen, 64, "sdpa")
    assert torch.equal(before[:start], after[:start]) and torch.equal(before[end:], after[end:])
    assert not torch.allclose(before[start:end], after[start:end])


def test_auto_picks_the_exact_backend_on_cpu():
    q = torch.zeros(4, HEADS, HEAD_DIM)
    assert resolve_backend("auto", q.device, q.dtype) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", q.device, q.dtype)
    if not (torch.cuda.is_available() and flash_attn_available()):
        with pytest.raises(RuntimeError, match="needs a CUDA GPU and the flash-attn package"):
            varlen_attention(q, q, q, torch.tensor([0, 4], dtype=torch.int32), 4, None, "flash")


@needs_cuda
def test_auto_picks_a_gpu_kernel_on_cuda():
    q = torch.zeros(4, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    assert resolve_backend("auto", q.device, q.dtype) == ("flash" if flash_attn_available() else "flex")
