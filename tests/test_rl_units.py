"""RL building blocks on hand-made inputs: each reward, group advantages, the clipped loss, the KL
penalty, and the teacher-forced log-probabilities against the SFT loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_gen.trainer.rewards import (RewardSet, Rollout, combine, diversity_penalty, group_normalise, history_reward,
                                         plan_reward, recommender_reward, target_reward)
from recbole_gen.trainer.rl import clipped_policy_loss, dpo_loss, group_advantages, kl_penalty
from test_genlmm_support import emoji64, make_core, gtiny  # noqa: F401


def _unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_target_and_history_rewards():
    a, b, c = _unit([1, 0, 0], [0, 1, 0], [1, 1, 0])
    samples = torch.stack([a, b]).unsqueeze(0)                  # [1, 2, 3]
    assert torch.allclose(target_reward(samples, a.unsqueeze(0)), torch.tensor([[1.0, 0.0]]))
    history = torch.stack([a, c, b]).unsqueeze(0)               # third item masked out
    mask = torch.tensor([[True, True, False]])
    expected = torch.tensor([[(1 + 1 / math.sqrt(2)) / 2, (0 + 1 / math.sqrt(2)) / 2]])
    assert torch.allclose(history_reward(samples, history, mask), expected, atol=1e-6)
    assert torch.equal(history_reward(samples, history, torch.zeros_like(mask)), torch.zeros(1, 2))


def test_recommender_reward_is_the_nearest_items_probability_relative_to_the_users_top_item():
    probs = torch.tensor([[0.0, 0.5, 0.25, 0.25], [0.0, 0.1, 0.1, 0.8]])
    nearest = torch.tensor([[[1], [2]], [[3], [1]]])            # [2 users, 2 samples, k=1]
    assert torch.allclose(recommender_reward(nearest, probs), torch.tensor([[1.0, 0.5], [1.0, 0.125]]))
    two = torch.tensor([[[1, 2], [2, 3]], [[3, 2], [1, -1]]])   # k=2: mean of the two; -1 (no item) counts 0
    assert torch.allclose(recommender_reward(two, probs), torch.tensor([[0.75, 0.5], [0.5625, 0.0625]]))
    # the padding item can never be "retrieved", even with all the recommender's mass on it
    spiky = torch.tensor([[0.9, 0.0, 0.09, 0.01]])
    valid = torch.tensor([False, True, True, True])
    assert torch.allclose(recommender_reward(torch.tensor([[[2]]]), spiky, valid), torch.tensor([[1.0]]))


def test_plan_reward_for_items_and_for_semantic_codes():
    probs = torch.tensor([[0.0, 0.4, 0.3, 0.2, 0.1]])
    assert torch.allclose(plan_reward(torch.tensor([[1, 3]]), probs), torch.tensor([[1.0, 0.5]]))
    codes = torch.tensor([0, 1, 0, 0, 1])                       # code 0: items 2, 3 (0.5); code 1: items 1, 4 (0.5)
    assert torch.allclose(plan_reward(torch.tensor([[0, 1]]), probs, codes), torch.tensor([[1.0, 1.0]]))


def test_rewards_normalised_within_their_group_before_weighting():
    class Catalogue:
        embeddings = torch.eye(4)
        has_image = torch.ones(4, dtype=torch.bool)

        def encode(self, pixels):
            return pixels.flatten(1)[:, :4]

    pixels = torch.zeros(1, 2, 1, 2, 2)
    pixels[0, 0, 0, 0, 0], pixels[0, 1, 0, 0, 1] = 1.0, 1.0           # sample 0 = item 0, sample 1 = item 1
    rollout = Rollout(pixels, torch.full((1, 2), -1), torch.tensor([1]), torch.tensor([[2, 0]]), torch.tensor([1]),
                      torch.tensor([0]))
    raw = RewardSet(Catalogue(), {"target": 1.0, "history": 1.0})
    normalised = RewardSet(Catalogue(), {"target": 1.0, "history": 1.0}, normalise=True)
    parts, total = raw(rollout)
    assert torch.equal(parts["target"], torch.tensor([[1.0, 0.0]])) and torch.equal(total, torch.tensor([[1.0, 0.0]]))
    parts_n, total_n = normalised(rollout)
    assert torch.equal(parts_n["target"], parts["target"])  # components are logged raw
    assert torch.allclose(total_n, group_normalise(parts["target"]) + group_normalise(parts["history"]))


def test_dpo_loss_against_hand_computed_values():
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -2.0])
    loss, margin, accuracy = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    margins = torch.tensor([0.5 * ((-1 + 1.5) - (-3 + 2.5)), 0.5 * ((-2 + 2.0) - (-1 + 2.0))])  # [0.5, -0.5]
    assert loss.item() == pytest.approx((-F.logsigmoid(margins)).mean().item())
    assert margin.item() == pytest.approx(0.0) and accuracy.item() == 0.5


def test_the_plan_level_policy_gradient_moves_the_plan_towards_the_rewarded_one():
    """A 2-item toy: GRPO's advantages and clipped loss on the plan's log-probability (the column the RL trainer
    puts before the image tokens) move the plan distribution to the rewarded item."""
    logits = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        plans = torch.multinomial(logits.softmax(0).detach().expand(8, 2), 4, replacement=True, generator=generator)
        advantages = group_advantages((plans == 1).float()).reshape(-1)
        logp = logits.log_softmax(0)[plans.reshape(-1)].unsqueeze(1)
        loss, _ = clipped_policy_loss(logp, logp.detach(), advantages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logits.softmax(0)[1] > 0.9


def test_diversity_penalty_zero_for_distinct_one_for_identical():
    distinct = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1]).unsqueeze(0)
    same = _unit([1, 2, 3], [1, 2, 3], [1, 2, 3]).unsqueeze(0)
    assert torch.equal(diversity_penalty(distinct, 0.9), torch.zeros(1, 3))
    assert torch.allclose(diversity_penalty(same, 0.9), torch.ones(1, 3))
    # one near-duplicate pair: only those two are penalised, linearly above the threshold
    pair = _unit([1, 0, 0], [0.999, 0.0447, 0], [0, 0, 1]).unsqueeze(0)
    pen = diversity_penalty(pair, 0.9)
    cos = float(pair[0, 0] @ pair[0, 1])
    assert torch.allclose(pen, torch.tensor([[(cos - 0.9) / 0.1] * 2 + [0.0]]), atol=1e-5)
    assert torch.equal(diversity_penalty(same[:, :1], 0.9), torch.zeros(1, 1))  # a group of one


def test_combine_subtracts_the_diversity_penalty_and_refuses_all_zero():
    parts = {"target": torch.tensor([[1.0, 0.5]]), "diversity": torch.tensor([[1.0, 0.0]])}
    assert torch.allclose(combine(parts, {"target": 2.0, "diversity": 0.5}), torch.tensor([[1.5, 1.0]]))
    with pytest.raises(ValueError, match="every RL reward weight is 0"):
        combine(parts, {"target": 0.0})


def test_reward_set_refuses_missing_inputs():
    class Cat:
        embeddings = torch.zeros(3, 2)

    with pytest.raises(ValueError, match="needs a recommender"):
        RewardSet(Cat(), {"recommender": 1.0})
    with pytest.raises(ValueError, match="needs a recommender"):
        RewardSet(Cat(), {"plan": 1.0})
    with pytest.raises(ValueError, match="needs a dataset with a judge file"):
        RewardSet(Cat(), {"oracle": 1.0})
    with pytest.raises(ValueError, match="unknown RL reward"):
        RewardSet(Cat(), {"taste": 1.0})
    assert isinstance(Rollout, type)


def test_group_advantages_by_hand_and_constant_group_is_zero():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    adv = group_advantages(rewards, eps=1e-6)
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + 9) / 4)
    assert torch.allclose(adv[0], torch.tensor([(r - mean) / std for r in (1, 2, 3, 6)]), atol=1e-5)
    assert torch.equal(adv[1], torch.zeros(4))
    assert torch.isfinite(group_advantages(torch.zeros(3, 5))).all()


def test_clipped_loss_against_hand_computed_values():
    old = torch.zeros(3, 2)
    # ratios: row 0 = 1.5 (clipped at 1.2 for A>0), row 1 = 0.5 (clipped at 0.8 for A<0), row 2 = 1.1 (inside)
    logp = torch.log(torch.tensor([[1.5, 1.5], [0.5, 0.5], [1.1, 1.1]]))
    adv = torch.tensor([2.0, -1.0, 1.0])
    loss, clip_fraction = clipped_policy_loss(logp, old, adv, clip_eps=0.2)
    expected = (-(1.2 * 2.0) + -(-1.0 * 0.8) + -(1.1 * 1.0)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert clip_fraction.item() == pytest.approx(4 / 6)
    # pessimistic side: A<0 and ratio above 1+e is *not* clipped (the unclipped term is smaller)
    loss2, frac2 = clipped_policy_loss(torch.log(torch.full((1, 1), 1.5)), torch.zeros(1, 1), torch.tensor([-1.0]), 0.2)
    assert loss2.item() == pytest.approx(1.5) and frac2.item() == 0.0
    # gradient at ratio 1 is -A / T per token (the REINFORCE direction)
    logp = torch.zeros(2, 4, requires_grad=True)
    clipped_policy_loss(logp, torch.zeros(2, 4), torch.tensor([1.0, -2.0]))[0].backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 8] * 4, [2 / 8] * 4]))


def test_kl_penalty_zero_when_equal_positive_otherwise():
    logp = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    assert torch.equal(kl_penalty(logp, logp), torch.zeros(1, 3))
    ref = torch.log(torch.tensor([[0.4, 0.4, 0.3]]))
    d = ref - logp
    assert torch.allclose(kl_penalty(logp, ref), d.exp() - d - 1) and (kl_penalty(logp, ref) > 0).all()


def test_token_logprobs_match_the_sft_loss_and_policy_equals_reference(emoji64, gtiny):
    torch.manual_seed(0)
    core = make_core(gtiny).eval()
    histories, targets = [[1, 2, 3], [], [40, 41]], torch.tensor([4, 5, 42])
    with torch.no_grad():
        logp, _, entropy = core.token_logprobs(histories, core.tokens_of(targets), targets)  # plans teacher-forced
        sft = core.loss(histories, targets, parts=True)["image"]
    assert torch.allclose(-logp.mean(1), sft, atol=1e-5)
    assert (entropy > 0).all() and (entropy <= math.log(core.backbone.codebook_size) + 1e-4).all()
    # generated tokens score the same under the policy and an identical reference: KL exactly 0
    tokens, plans = (x.flatten(0, 1) for x in core.generate_tokens(histories, num_samples=2, temperature=1.0, seed=3))
    flat = [h for h in histories for _ in range(2)]
    import copy

    reference = copy.deepcopy(core)
    with torch.no_grad():
        a = core.token_logprobs(flat, tokens, plans)[0]
        b = reference.token_logprobs(flat, tokens, plans)[0]
    assert torch.equal(kl_penalty(a, b), torch.zeros_like(a))
    # temperature divides the logits
    with torch.no_grad():
        hot = core.token_logprobs(flat, tokens, plans, temperature=2.0)[0]
    assert not torch.allclose(hot, a)


def test_lora_rl_adapter_starts_at_the_sft_policy_and_switching_it_off_is_the_reference(emoji64, gtiny):
    torch.manual_seed(0)
    core = make_core(gtiny, finetune="lora").eval()
    sft_adapter = core.lmm.model.language_model.layers[0].self_attn.q_proj.lora_B["default"].weight
    with torch.no_grad():
        sft_adapter.normal_()  # an SFT adapter that changes the model
    histories, targets = [[1, 2, 3], [40]], torch.tensor([4, 41])
    tokens = core.tokens_of(targets)
    with torch.no_grad():
        sft = core.token_logprobs(histories, tokens, targets)[0]
    core.add_rl_adapter(seed=0)
    trainable = {n for n, p in core.named_parameters() if p.requires_grad}
    assert trainable and all(".rl." in n for n in trainable), sorted(trainable)[:5]
    assert trainable <= core.saved_parameters and any(".default." in n for n in core.saved_parameters)
    with torch.no_grad():
        start = core.token_logprobs(histories, tokens, targets)[0]
    assert torch.allclose(start, sft, atol=1e-6)  # a fresh adapter is zero
    optimizer = torch.optim.SGD([p for p in core.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        core.loss(histories, targets).backward()
        optimizer.step()
    with torch.no_grad():
        moved = core.token_logprobs(histories, tokens, targets)[0]
        with core.reference_policy() as reference:
            ref = reference.token_logprobs(histories, tokens, targets)[0]
    assert not torch.allclose(moved, sft, atol=1e-4) and torch.allclose(ref, sft, atol=1e-6)
    assert {n for n, p in core.named_parameters() if p.requires_grad} == trainable  # restored after the switch
