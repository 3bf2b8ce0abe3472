"""GenLMM SFT: the loss falls, the history is used, LoRA and full fine-tuning both train."""
import torch

from test_genlmm_support import emoji64, group_sequences, make_core, train_core, vq_cache  # noqa: F401


def _split(groups, n_users=300, seed=0, copy=False):
    """Users within one subgroup; the target is the next item, or (``copy``) the last history item again:
    a near-deterministic use of the history that a tiny model learns in a couple of hundred steps."""
    seqs = group_sequences(groups, n_users, 4, seed)
    hist, target = [s[:3] for s in seqs], [s[2] if copy else s[3] for s in seqs]
    cut = int(n_users * 0.8)
    return (hist[:cut], target[:cut]), (hist[cut:], torch.tensor(target[cut:]))


def test_vq_tokenizer_is_cached_and_frozen(emoji64, vq_cache):
    first = make_core(emoji64, vq_cache)
    again = make_core(emoji64, vq_cache)
    assert first.vq_info == again.vq_info and (vq_cache / "genlmm_vq" / f"vq-{first.vq_info['key']}.pt").is_file()
    assert torch.equal(first.item_tokens, again.item_tokens)
    assert not any(p.requires_grad for p in first.lmm.model.vqmodel.parameters())
    # distinct items get (mostly) distinct token sequences; row 0 is padding
    assert len({tuple(r) for r in first.item_tokens[1:].tolist()}) >= 50


def test_catalogue_pretraining_teaches_drawing_and_is_cached(emoji64, vq_cache):
    from recbole_gen.model.pretrain import pretrain_steps

    settings = dict(pretrain_steps=150, pretrain_batch_size=32, pretrain_learning_rate=3e-3)
    scratch = make_core(emoji64, vq_cache)
    trained = make_core(emoji64, vq_cache, **settings)
    info = trained.pretrain_info
    assert scratch.pretrain_info is None and info["steps"] == 150 and info["final_loss"] < info["first_loss"] - 1.0, info
    again = make_core(emoji64, vq_cache, **settings)  # from the cache: the same weights, no second training
    assert again.pretrain_info == info
    assert all(torch.equal(v, again.saved_state_dict()[k]) for k, v in trained.saved_state_dict().items())
    # it draws the item its prompt names: reconstruction CE far below the untrained model's
    items = torch.arange(1, len(emoji64[0]))
    with torch.no_grad():
        prompt = trained.prompt.with_instruction(trained.settings["pretrain_instruction"])
        ce = [core.loss([[i] for i in items.tolist()], items, reduction="none", prompt=prompt).mean().item()
              for core in (scratch, trained)]
    assert ce[1] < ce[0] - 1.0, ce
    assert pretrain_steps({"pretrain_steps": None, "lmm_path": "/some/checkpoint"}) == 0
    assert pretrain_steps({"pretrain_steps": None, "lmm_path": None}) > 0


def test_sft_loss_falls(emoji64, vq_cache):
    _, _, groups = emoji64
    torch.manual_seed(0)
    core = make_core(emoji64, vq_cache)
    (train_h, train_t), _ = _split(groups)
    losses = train_core(core, train_h, train_t, steps=200)
    start, end = sum(losses[:5]) / 5, sum(losses[-20:]) / 20
    assert start > 3.5 and end < start - 2.0, (start, end)  # ln(64) = 4.16 at start; measured ~1.3 at the end


def test_history_is_used(emoji64, vq_cache):
    _, _, groups = emoji64
    torch.manual_seed(0)
    core = make_core(emoji64, vq_cache)
    (train_h, train_t), (test_h, test_t) = _split(groups, copy=True)
    train_core(core, train_h, train_t, steps=200)
    shuffled = [test_h[i] for i in torch.randperm(len(test_h), generator=torch.Generator().manual_seed(0)).tolist()]
    with torch.no_grad():
        true = core.loss(test_h, test_t, reduction="none").mean().item()
        other = core.loss(shuffled, test_t, reduction="none").mean().item()
    # held-out users: the true history must explain the target better (measured: 1.27 vs 2.29 nats per token)
    assert other - true > 0.5, (true, other)


def test_lora_and_full_both_train(emoji64, vq_cache):
    _, _, groups = emoji64
    (train_h, train_t), _ = _split(groups, n_users=100)
    for mode in ("full", "lora"):
        torch.manual_seed(0)
        core = make_core(emoji64, vq_cache, finetune=mode)
        base = core.lmm.model.language_model.layers[0].self_attn.q_proj
        frozen_before = (base.base_layer.weight if mode == "lora" else base.weight).detach().clone()
        losses = train_core(core, train_h, train_t, steps=60)
        assert sum(losses[-10:]) / 10 < losses[0] - 0.5, (mode, losses[0], losses[-10:])
        if mode == "lora":
            assert torch.equal(base.base_layer.weight, frozen_before)  # the base stays frozen
            names = set(core.saved_state_dict())
            assert names and all("lora_" in n or "generation_head" in n or "generation_aligner" in n or "history_proj" in n
                                 for n in names), sorted(names)[:10]
        else:
            assert not torch.equal(base.weight, frozen_before)


def test_text_loss_and_titles(emoji64, vq_cache):
    core = make_core(emoji64, vq_cache, use_titles=True, text_loss_weight=0.5)
    image_only = make_core(emoji64, vq_cache, use_titles=True)
    hist, target = [[1, 2], [], [40]], torch.tensor([3, 4, 41])
    with_text = core.loss(hist, target)
    assert torch.isfinite(with_text) and with_text.item() > image_only.loss(hist, target).item()
    with_text.backward()
    assert core.lmm.lm_head.weight.grad is not None and core.lmm.lm_head.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_same_gradients(emoji64, vq_cache):
    hist, target = [[1, 2, 3], [5]], torch.tensor([4, 6])
    grads = []
    for flag in (False, True):
        core = make_core(emoji64, vq_cache, gradient_checkpointing=flag)
        core.train()
        core.loss(hist, target).backward()
        grads.append(core.lmm.model.language_model.layers[0].mlp.up_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_bf16_backbone_runs(emoji64, vq_cache):
    core = make_core(emoji64, vq_cache, dtype="bf16")
    assert core.lmm.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    loss = core.loss([[1, 2], []], torch.tensor([3, 4]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    tokens = core.generate_tokens([[1, 2]], num_samples=1, temperature=0)
    assert tokens.shape == (1, 1, core.num_image_tokens)
