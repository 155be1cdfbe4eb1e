"""Every teacher-forced decoder path computes the same function: the shrinking batch, the
fixed-shape unroll, its CUDA-graph replay (GPU only) and the textbook loop the benchmark times."""

from __future__ import annotations

import pytest
import torch

from benchmarks.textbook import textbook_forward
from imgcap.decoders.cuda_graphs import GraphedUnroll
from imgcap.decoders.lstm_attention import AttentionLSTMDecoder
from imgcap.errors import ConfigError
from imgcap.objectives import xe_attention_loss
from imgcap.vocab import END_ID, PAD_ID, START_ID

V, P, C = 40, 9, 12


def _batch(B: int = 6, T: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, P, C, generator=g)
    lengths = torch.randint(3, T + 1, (B,), generator=g)
    lengths[0] = T  # the longest caption fills the tensor, as after collate
    captions = torch.randint(4, V, (B, T), generator=g)
    captions[:, 0] = START_ID
    for i, n in enumerate(lengths.tolist()):
        captions[i, n - 1] = END_ID
        captions[i, n:] = PAD_ID
    return features, captions, lengths


def _decoder(deep_output: bool = False, **kwargs) -> AttentionLSTMDecoder:
    torch.manual_seed(0)
    dec = AttentionLSTMDecoder(V, C, 16, 20, 12, dropout=0.5, deep_output=deep_output, **kwargs)
    return dec.eval()  # dropout off: paths draw their dropout masks in different shapes


def _loss_and_grads(dec, run, features, captions, lengths):
    dec.zero_grad(set_to_none=True)
    features = features.clone().requires_grad_(True)
    logits, alphas = run(features, captions, lengths)
    loss = xe_attention_loss(logits, alphas, captions[:, 1:], alpha_c=1.0)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in dec.named_parameters()}
    return loss.detach(), logits.detach(), alphas.detach(), grads, features.grad


@pytest.mark.parametrize("deep_output", [False, True])
def test_fixed_unroll_equals_shrinking_batch_in_loss_and_gradients(deep_output):
    dec = _decoder(deep_output)
    batch = _batch()
    shrink = _loss_and_grads(dec, dec.forward_shrinking, *batch)
    fixed = _loss_and_grads(dec, dec.forward_fixed, *batch)
    torch.testing.assert_close(fixed[0], shrink[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fixed[1], shrink[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fixed[2], shrink[2], atol=1e-5, rtol=1e-5)
    for name, grad in shrink[3].items():
        torch.testing.assert_close(fixed[3][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(fixed[4], shrink[4], atol=1e-5, rtol=1e-4)


def test_fixed_unroll_zeroes_positions_past_each_caption():
    dec = _decoder()
    features, captions, lengths = _batch()
    logits, alphas = dec.forward_fixed(features, captions, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert logits[i, n - 1 :].abs().sum() == 0 and alphas[i, n - 1 :].abs().sum() == 0
        assert logits[i, : n - 1].abs().sum() > 0
        torch.testing.assert_close(alphas[i, : n - 1].sum(-1), torch.ones(n - 1))


def test_textbook_loop_computes_the_same_loss():
    # the benchmark's baseline must be the same function, or its ratio means nothing
    dec = _decoder()
    batch = _batch()
    ours = _loss_and_grads(dec, dec.forward_shrinking, *batch)
    textbook = _loss_and_grads(dec, lambda *b: textbook_forward(dec, *b), *batch)
    torch.testing.assert_close(textbook[0], ours[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(textbook[1], ours[1], atol=1e-5, rtol=1e-5)


def test_auto_unroll_is_shrinking_on_cpu_and_fixed_on_cuda():
    dec = _decoder()
    assert dec.unroll_mode(torch.device("cpu")) == "shrink"
    assert dec.unroll_mode(torch.device("cuda")) == "fixed"
    dec.unroll = "fixed"
    assert dec.unroll_mode(torch.device("cpu")) == "fixed"
    with pytest.raises(ConfigError, match=r"model\.decoder\.unroll"):
        AttentionLSTMDecoder(V, C, unroll="graph")


def test_forward_dispatches_to_the_chosen_path():
    features, captions, lengths = _batch()
    dec = _decoder(unroll="fixed")
    seen = []
    dec.fixed_runner = lambda *args: seen.append(args) or dec.forward_fixed(*args)
    logits, _ = dec(features, captions, lengths)
    assert len(seen) == 1 and logits.shape == (6, 9, V)
    dec(features, captions, lengths, teacher_forcing_ratio=0.5)  # sampling: always shrinking
    assert len(seen) == 1
    dec(features, captions)  # no lengths: every caption runs all steps
    assert len(seen) == 2 and seen[-1][2].tolist() == [10] * 6


def test_graph_runner_falls_back_to_the_eager_unroll_off_cuda():
    dec = _decoder().train()
    runner = GraphedUnroll(dec)
    features, captions, lengths = _batch()
    torch.manual_seed(1)
    logits, alphas = runner(features, captions, lengths)
    torch.manual_seed(1)
    expected_logits, expected_alphas = dec.forward_fixed(features, captions, lengths)
    assert runner.graphs == {} and runner.disabled_reason is None  # nothing captured on the CPU
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(alphas, expected_alphas)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_equals_eager_unroll_on_gpu():
    dec = _decoder().cuda()
    dec.dropout = 0.0
    dec.drop.p = 0.0
    dec.train()
    runner = GraphedUnroll(dec, time_bucket=8)
    batch = [t.cuda() for t in _batch(T=10)]
    eager = _loss_and_grads(dec, dec.forward_fixed, *batch)
    for _ in range(2):  # capture, then replay
        graphed = _loss_and_grads(dec, runner, *batch)
    assert runner.disabled_reason is None and len(runner.graphs) == 1
    torch.testing.assert_close(graphed[0], eager[0], atol=1e-5, rtol=1e-5)
    for name, grad in eager[3].items():
        torch.testing.assert_close(graphed[3][name], grad, atol=1e-5, rtol=1e-4, msg=name)
