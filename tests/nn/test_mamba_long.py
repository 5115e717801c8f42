"""Long sequences in bounded memory (`encode_long`), the state that flows between pieces, and the
fused single-step kernel, each against the plain forward."""

import pytest
import torch

from mambacast import MambaConfig, MambaModel
from mambacast.nn.mamba import LONG_INPUT_STEPS, LayerState

SMALL = MambaConfig(d_model=16, d_state=4, num_layers=2, prediction_horizons=[1, 5])


def model_of(config=SMALL, dtype=torch.float64, n_features=3, seed=0):
    torch.manual_seed(seed)
    return MambaModel(config, n_features=n_features).to(dtype).eval()


def encoder_parameters(model):
    return [p for n, p in model.named_parameters() if "head" not in n]


@pytest.mark.parametrize("seq_len, chunk_len", [(20, 1), (20, 3), (203, 7), (203, 64), (203, 203), (203, 1000)])
def test_encode_long_equals_encode(seq_len, chunk_len):
    model = model_of()
    x = torch.randn(2, seq_len, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_long(x, chunk_len=chunk_len), model.encode(x),
                                   rtol=1e-12, atol=1e-12)


def test_a_20k_step_forward_equals_its_chunks_at_the_guide_config():
    model = model_of(MambaConfig(), torch.float32, n_features=5)
    x = torch.randn(1, 20_000, 5)
    with torch.no_grad():
        whole = model._encode_whole(x)                   # one pass over the whole sequence
        pieces = model.encode_long(x, chunk_len=3000)   # 20k is not a multiple of 3000
        ordinary = model.encode(x)                       # the ordinary call, routed through encode_long
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ordinary, whole, rtol=1e-5, atol=1e-5)


def test_the_ordinary_call_routes_long_inputs_without_grad_through_encode_long(monkeypatch):
    model = model_of()
    calls = []
    original = model.encode_long
    monkeypatch.setattr(model, "encode_long", lambda x, **kw: calls.append(x.shape[1]) or original(x, **kw))
    short = torch.randn(1, LONG_INPUT_STEPS, 3, dtype=torch.float64)
    long = torch.randn(1, LONG_INPUT_STEPS + 1, 3, dtype=torch.float64)
    with torch.no_grad():
        model.encode(short)
        routed = model.encode(long)
        loc, _, _ = model.forward_distribution(long)
    assert calls == [LONG_INPUT_STEPS + 1] * 2                   # only the long input, from encode and the head
    with torch.no_grad():
        torch.testing.assert_close(routed, model._encode_whole(long), rtol=1e-12, atol=1e-12)
    out = model.encode(long)                                     # autograd on: one graph, not routed
    assert calls == [LONG_INPUT_STEPS + 1] * 2 and out.requires_grad
    out[:, -1].sum().backward()
    assert all(p.grad is not None for p in encoder_parameters(model))


def test_state_continues_into_step_and_into_another_encode_long():
    model = model_of()
    x = torch.randn(2, 120, 3, dtype=torch.float64)
    with torch.no_grad():
        whole = model.encode(x)
        first, state = model.encode_long(x[:, :70], chunk_len=32, return_state=True)
        second, state2 = model.encode_long(x[:, 70:100], chunk_len=9, state=state, return_state=True)
        steps = []
        for t in range(100, 120):
            h, state2 = model.step(x[:, t], state2)
            steps.append(h)
    torch.testing.assert_close(torch.cat([first, second, torch.stack(steps, 1)], 1), whole,
                               rtol=1e-12, atol=1e-12)
    assert all(isinstance(s, LayerState) for s in state)


@pytest.mark.parametrize("checkpoint", [True, False])
def test_gradients_through_chunks_equal_the_unchunked_ones(checkpoint):
    model = model_of().train()
    x = torch.randn(2, 150, 3, dtype=torch.float64, requires_grad=True)
    params = [x, *encoder_parameters(model)]
    w = torch.randn(2, 150, 16, dtype=torch.float64)
    g_ref = torch.autograd.grad((model.encode(x) * w).sum(), params)
    g = torch.autograd.grad((model.encode_long(x, chunk_len=37, checkpoint=checkpoint) * w).sum(), params)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gradients_flow_into_the_initial_state():
    model = model_of().train()
    x = torch.randn(1, 40, 3, dtype=torch.float64)
    with torch.no_grad():
        _, state = model.encode_long(torch.randn(1, 10, 3, dtype=torch.float64), return_state=True)
    state = [LayerState(s.conv.clone().requires_grad_(), s.ssm.clone().requires_grad_()) for s in state]
    leaves = [t for s in state for t in s]
    w = torch.randn(1, 40, 16, dtype=torch.float64)

    def loss(chunk_len, checkpoint):
        return (model.encode_long(x, chunk_len=chunk_len, state=state, checkpoint=checkpoint) * w).sum()

    g_whole = torch.autograd.grad(loss(1000, False), leaves)
    g_chunked = torch.autograd.grad(loss(6, True), leaves)
    for a, b in zip(g_chunked, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert all(g.abs().sum() > 0 for g in g_whole)


def saved_bytes(fn):
    """Bytes autograd saves for backward while running fn() (outside checkpointed regions)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_checkpointing_keeps_only_piece_boundaries():
    # A checkpointed encode_long keeps each piece's input and boundary state, not its activations.
    model = model_of(MambaConfig(), torch.float32, n_features=5).train()
    x = torch.randn(1, 2048, 5)
    plain = saved_bytes(lambda: model.encode_long(x, chunk_len=256, checkpoint=False))
    checkpointed = saved_bytes(lambda: model.encode_long(x, chunk_len=256, checkpoint=True))
    out_bytes = 2048 * 64 * 4
    assert plain > 20 * out_bytes
    assert checkpointed < 2 * out_bytes


def test_encode_long_validates_its_arguments():
    model = model_of()
    with pytest.raises(ValueError, match="chunk_len=0"):
        model.encode_long(torch.randn(1, 5, 3, dtype=torch.float64), chunk_len=0)
    with pytest.raises(ValueError, match="n_features=3"):
        model.encode_long(torch.randn(1, 5, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_step_equals_reference_step(dtype, tol):
    model = model_of(MambaConfig(num_layers=2), dtype)
    x = torch.randn(3, 12, 3, dtype=dtype)
    with torch.no_grad():
        state_f = model.init_state(3)
        state_r = model.init_state(3)
        for t in range(12):
            hidden = model.embed(x[:, t])
            h_f = h_r = hidden
            new_f, new_r = [], []
            for layer, sf, sr in zip(model.layers, state_f, state_r, strict=True):
                h_f, sf = layer.step(h_f, sf)
                h_r, sr = layer.step_ref(h_r, sr)
                new_f.append(sf)
                new_r.append(sr)
            state_f, state_r = new_f, new_r
            torch.testing.assert_close(h_f, h_r, rtol=tol, atol=tol)
    for sf, sr in zip(state_f, state_r, strict=True):
        torch.testing.assert_close(sf.conv, sr.conv, rtol=tol, atol=tol)
        torch.testing.assert_close(sf.ssm, sr.ssm, rtol=tol, atol=tol)


def test_step_with_autograd_uses_the_differentiable_path():
    model = model_of().train()
    state = model.init_state(2)
    h, _ = model.step(torch.randn(2, 3, dtype=torch.float64), state)
    h.sum().backward()
    assert model.layers[0].in_proj.weight.grad is not None


def test_step_sees_parameter_updates():
    model = model_of()
    x = torch.randn(2, 3, dtype=torch.float64)
    xs = torch.stack([x, x], 1)                      # two steps: A acts from the second on

    def two_steps():
        state = model.init_state(2)
        for t in range(2):
            h, state = model.step(xs[:, t], state)
        return h

    with torch.no_grad():
        before = two_steps()
        model.layers[0].A_log.add_(0.5)   # in place, as an optimizer does
        after = two_steps()
        ref = model.encode(xs)[:, -1]
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-12, atol=1e-12)
