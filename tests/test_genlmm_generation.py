"""GenLMM decoding: conditioning is real, guidance acts, the KV cache is exact, odd histories work.
(``generate_tokens`` returns ``(tokens, plans)``; without a plan head the plans are -1.)"""
import pytest
import torch

from recbole_gen.model.prompt import PromptTooLongError
from test_genlmm_support import emoji64, group_sequences, make_core, train_core, gtiny  # noqa: F401


def draw(core, histories, **kwargs):
    return core.generate_tokens(histories, **kwargs)[0]


@pytest.fixture(scope="module")
def trained(emoji64, gtiny):
    """A tiny model trained briefly with cond dropout (so the unconditional branch means something)."""
    _, _, groups = emoji64
    torch.manual_seed(0)
    core = make_core(gtiny, cond_dropout=0.2)
    seqs = group_sequences(groups, 200, 4, 1)
    drop = torch.rand(len(seqs), generator=torch.Generator().manual_seed(0)) < 0.2
    hist = [[] if d else s[:3] for s, d in zip(seqs, drop.tolist())]
    train_core(core, hist, [s[2] for s in seqs], steps=120)  # target = last history item
    return core


def test_different_histories_give_different_images(trained):
    tokens = draw(trained, [[1, 2, 3], [40, 41, 42]], num_samples=2, temperature=1.0, seed=7)
    assert not torch.equal(tokens[0], tokens[1])
    again = draw(trained, [[1, 2, 3], [40, 41, 42]], num_samples=2, temperature=1.0, seed=7)
    assert torch.equal(tokens, again)  # seeded
    other_seed = draw(trained, [[1, 2, 3]], num_samples=2, temperature=1.0, seed=8)
    assert not torch.equal(tokens[0], other_seed[0])


def test_guidance_changes_outputs(trained):
    hist = [[1, 2, 3], [17, 18]]
    plain = draw(trained, hist, num_samples=2, guidance_scale=0.0, temperature=1.0, seed=3)
    guided = draw(trained, hist, num_samples=2, guidance_scale=3.0, temperature=1.0, seed=3)
    assert not torch.equal(plain, guided)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_kv_cache_equals_no_cache(trained, guidance):
    hist = [[1, 2, 3], [], [50]]  # different prompt lengths: left padding must not matter
    cached = draw(trained, hist, num_samples=1, guidance_scale=guidance, temperature=0, use_cache=True)
    full = draw(trained, hist, num_samples=1, guidance_scale=guidance, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    assert len(set(cached.flatten().tolist())) > 3  # not a degenerate constant image


def test_batch_composition_does_not_change_a_users_images(trained):
    alone = draw(trained, [[5, 6]], num_samples=2, temperature=1.0, top_k=20, top_p=0.9, seed=11)
    mixed = draw(trained, [[30, 31, 32], [5, 6], []], num_samples=2, temperature=1.0, top_k=20, top_p=0.9, seed=11)
    assert torch.equal(alone[0], mixed[1])


def test_empty_and_length_one_histories_generate(trained):
    tokens = draw(trained, [[], [9]], num_samples=2, guidance_scale=1.5, temperature=1.0, seed=0)
    pixels = trained.decode(tokens)
    assert pixels.shape == (2, 2, 3, 16, 16) and torch.isfinite(pixels).all()
    assert 0 <= pixels.min() and pixels.max() <= 1


def test_over_long_history_errors_or_truncates(emoji64, gtiny):
    strict = make_core(gtiny, history_mode="vq", history_len=20, lmm_max_length=100)
    history = list(range(1, 11))  # 10 items x (16 + 2) tokens does not fit 100 - 16
    with pytest.raises(PromptTooLongError, match="history_len"):
        strict.histories(torch.tensor([history]), torch.tensor([10]))
    loose = make_core(gtiny, history_mode="vq", history_len=20, lmm_max_length=100, truncate_history=True)
    kept = loose.histories(torch.tensor([history]), torch.tensor([10]))[0]
    assert kept == history[-len(kept):] and 0 < len(kept) < 10  # the oldest items are dropped
    assert draw(loose, [kept], temperature=0).shape == (1, 1, 16)


def test_history_modes_and_recbole_padding(emoji64, gtiny):
    for mode in ("semantic", "vq", "vision"):
        core = make_core(gtiny, history_mode=mode)
        # RecBole's item_id_list is left-aligned and zero-padded; only the last history_len items are used
        seq = torch.tensor([[4, 5, 6, 7, 0, 0], [9, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
        hist = core.histories(seq, torch.tensor([4, 1, 0]))
        assert hist == [[5, 6, 7], [9], []]
        assert torch.isfinite(core.loss(hist, torch.tensor([1, 2, 3])))
        assert draw(core, hist, temperature=0).shape == (3, 1, 16)
