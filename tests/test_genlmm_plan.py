"""Plan, then draw: the plan head learns what comes next from content (items never seen in training can be
planned) and per-item terms (look-alikes told apart), the plan stage is cached, drawing follows the plan, nothing
reads the target, no consumed item is planned, sampling is seeded and cache-exact, and the same code runs on a real
(save_pretrained) checkpoint with LoRA."""
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_gen.config import Config
from recbole_gen.data import create_dataset, data_preparation
from recbole_gen.model.backbone import save_tiny_checkpoint
from recbole_gen.model.core import NO_PLAN
from test_genlmm_support import emoji64, group_sequences, gtiny, make_core, make_model, recbole_config, train_core  # noqa: F401

PLAN = dict(plan="item", content_fields=["group"])


def _sequences(groups, n_users=240, seed=3, exclude=()):
    """Users within one subgroup (history -> next item of the same subgroup), never targeting ``exclude``."""
    seqs = [s for s in group_sequences(groups, n_users, 4, seed) if s[3] not in exclude]
    return [s[:3] for s in seqs], [s[3] for s in seqs]


@pytest.fixture(scope="module")
def planner(emoji64, gtiny):
    """A tiny plan-then-draw model trained on same-subgroup users, one item of each subgroup never a target."""
    _, _, groups = emoji64
    unseen = [int(torch.nonzero(groups == g)[0]) for g in range(4)]
    torch.manual_seed(0)
    model = make_model(gtiny, **PLAN)
    model.core.item_seen[unseen] = False  # cold: never a training target here, so no per-item terms
    histories, targets = _sequences(groups, exclude=unseen)
    losses = train_core(model.core, histories, targets, steps=150)
    return model, unseen, histories, targets, losses


def test_the_plan_loss_falls_and_plans_follow_the_history(planner, emoji64):
    model, _, histories, targets, _ = planner
    _, _, groups = emoji64
    core = model.core
    with torch.no_grad():
        parts = core.loss(histories[:64], torch.tensor(targets[:64]), parts=True)
        logits = core.plan_scores(histories[:64])
    assert parts["plan"].mean() < torch.log(torch.tensor(62.0)) - 1.0, parts["plan"].mean()  # far below uniform
    planned_group = groups[logits.argmax(1)]
    history_group = torch.tensor([int(groups[h[-1]]) for h in histories[:64]])
    assert (planned_group == history_group).float().mean() > 0.9  # the plan stays in the history's subgroup


def test_an_item_never_seen_in_training_gets_a_finite_content_derived_score(planner):
    model, unseen, histories, _, _ = planner
    core = model.core
    with torch.no_grad():
        embeds, mask = core.prompt_embeds(histories[:8])
        hidden = core._lm(embeds, mask).last_hidden_state[:, -1]
        logits = core.plan_logits(hidden, histories[:8])
        vectors = core.content_vectors(torch.tensor(unseen))
        by_hand = core.plan_query(hidden) @ vectors.T / core.hidden ** 0.5
        by_hand += core.history_match(histories[:8], core.plan_vectors())[:, unseen]
    assert torch.isfinite(logits[:, unseen]).all()
    assert torch.allclose(logits[:, unseen], by_hand, atol=1e-5)  # its score comes from its content vector
    assert logits[:, 0].isneginf().all()  # the padding item is never planned


@pytest.mark.parametrize("item_terms", [True, False])
def test_per_item_terms_tell_look_alikes_apart_and_leave_a_cold_item_to_its_content(gtiny, item_terms):
    """Items 5, 6 and 7 share a subgroup and are given one image: only 5 is ever chosen, 7 never occurs in training.
    With per-item terms 5 is planned over its look-alike 6; without them the two are the same plan. The cold item
    7 is scored by its content alone either way."""
    torch.manual_seed(0)
    model = make_model(gtiny, item_id_embedding=item_terms, plan_item_bias=item_terms, **PLAN)
    core = model.core
    tokens = core.tokens_of(torch.arange(core.item_num)).cpu()
    tokens[6] = tokens[7] = tokens[5]
    core.set_item_tokens(tokens)
    core.item_seen[7] = False
    histories = [[i, j] for i in range(1, 17) for j in range(1, 17) if 7 not in (i, j)]  # the same subgroup
    train_core(core, histories, [5] * len(histories), steps=60)
    with torch.no_grad():
        logits = core.plan_scores(histories[:8])
        hidden = core._lm(*core.prompt_embeds(histories[:8])).last_hidden_state[:, -1]
        content_only = core.plan_query(hidden) @ core.content_vectors(torch.tensor([7])).T / core.hidden ** 0.5
        content_only += core.history_match(histories[:8], core.plan_vectors())[:, 7:8]
    if item_terms:
        assert (logits[:, 5] > logits[:, 6] + 1).all(), (logits[:, 5], logits[:, 6])
    else:
        assert torch.allclose(logits[:, 5], logits[:, 6])
    assert torch.allclose(logits[:, 7:8], content_only, atol=1e-5)  # no ID embedding, no bias: its content alone


def test_the_history_match_weighs_each_recent_items_likeness_by_how_recent_it_is(gtiny):
    """By hand: a weight per step back for the content cosine, and the log of a recency-weighted histogram of the
    history's subgroups (``group`` here), smoothed, less the log of the subgroup's interactions."""
    core = make_model(gtiny, **PLAN).core
    taste = core.taste["group"]
    with torch.no_grad():
        core.recency.zero_()
        core.recency[0] = 2.0  # cosine: the last item only
        taste.log_weights.zero_()
        taste.log_weights[:2] = torch.tensor([3.0, 0.5]).log()  # subgroup: the last item, then the 2nd
        taste.log_smoothing.fill_(torch.tensor(0.25).log())
        vectors = core.plan_vectors()
        match = core.history_match([[20, 3], [3]], vectors)
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    group = core.content_group
    value_bias = taste.value_bias.detach()[group]
    expected = 2.0 * unit @ unit[3] + (0.25 + 3.0 * (group == group[3]) + 0.5 * (group == group[20])).log() + value_bias
    assert torch.allclose(match[0], expected, atol=1e-5)
    alone = 2.0 * unit @ unit[3] + (0.25 + 3.0 * (group == group[3])).log() + value_bias  # one item: no 2nd
    assert torch.allclose(match[1], alone, atol=1e-5)


def test_an_untrained_plan_head_ranks_as_the_history_taste_baseline_does(gtiny):
    """Before training the plan head's query is zero and its cosine weights are 0, so its scores are the item bias
    (log of training interactions + 1) and the taste: CategoryTaste's scores with the same settings, to the digit."""
    from recbole_gen.model.category_taste import CategoryTaste

    model = make_model(gtiny, **PLAN)
    data_path, cache = gtiny
    steps = model.settings.history_len
    config = Config(model="CategoryTaste", dataset="gtiny", config_dict=recbole_config(
        data_path, cache_dir=str(cache), category_field="group", MAX_ITEM_LIST_LENGTH=steps,
        taste_continuity=model.settings.plan_prior_continuity, taste_smoothing=model.settings.plan_prior_smoothing,
        taste_decay=model.settings.plan_prior_decay,
        load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "group"]}))
    train, _, _ = data_preparation(config, create_dataset(config))
    ranker = CategoryTaste(config, train._dataset)
    histories = [[3], [20, 3], [5, 9, 20, 3, 41][-steps:]]  # a full one too
    seq = torch.tensor([h + [0] * (steps - len(h)) for h in histories])
    with torch.no_grad():
        planned = model.core.plan_scores(histories)[:, 1:]
        ranked = ranker.full_sort_predict(Interaction({ranker.ITEM_SEQ: seq, ranker.ITEM_SEQ_LEN: torch.tensor([len(h) for h in histories])}))[:, 1:]
    assert torch.allclose(planned, ranked, atol=1e-5)


def test_the_plan_stage_is_cached_and_rebuilt_when_its_settings_change(gtiny, monkeypatch):
    import recbole_gen.trainer.pretrain as pretrain

    calls = []
    original = pretrain.plan_stage
    monkeypatch.setattr(pretrain, "plan_stage", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    settings = dict(plan_stage_steps=5, plan_stage_batch_size=16, **PLAN)
    first = make_model(gtiny, **settings)
    again = make_model(gtiny, **settings)
    assert len(calls) == 1 and first.artifact_info["plan_stage"] == again.artifact_info["plan_stage"]
    assert first.artifact_info["plan_stage"]["rows"] == len(first._dataset.inter_feat)
    assert all(torch.equal(a, b) for a, b in zip(first.core.saved_state_dict().values(), again.core.saved_state_dict().values()))
    make_model(gtiny, **{**settings, "plan_stage_learning_rate": 1e-4})
    assert len(calls) == 2
    # only the plan head moves: the item vectors and the language model condition the drawing too
    before, after = make_model(gtiny, **{**settings, "plan_stage_steps": 0}).core.saved_state_dict(), first.core.saved_state_dict()
    head = {name for name, p in first.core.named_parameters() if any(p is q for q in first.core.plan_head_parameters())}
    assert head == {"plan_query.weight", "plan_query.bias", "plan_bias", "recency", "taste.group.log_weights",
                    "taste.group.log_smoothing", "taste.group.value_bias"}
    assert [name for name in before if not torch.equal(before[name], after[name])] == sorted(head, key=list(before).index)


def test_drawing_follows_the_plan_on_a_memorised_catalogue(emoji64, gtiny):
    """After the catalogue pre-training, forcing a plan draws that item: the greedy drawing's image tokens agree
    with the planned item's own tokens, at least as well as with any other item's (emoji64 has near-duplicates
    whose tokens are the planned item's) and far better than with the average other item's."""
    model = make_model(gtiny, pretrain_steps=400, pretrain_batch_size=32, pretrain_learning_rate=3e-3, **PLAN)
    core = model.core
    items = torch.arange(1, core.item_num)
    draw_this = core.prompt.with_instruction("Draw this item.")  # the pre-training's prompt
    tokens, plans = core.generate_tokens([[] for _ in items], temperature=0, plans=items.view(-1, 1), prompt=draw_this)
    assert torch.equal(plans.flatten(), items)
    agreement = (tokens[:, 0].unsqueeze(1) == core.tokens_of(items).unsqueeze(0)).float().mean(-1)  # [drawn, item]
    planned = agreement.diagonal()
    off = agreement.masked_fill(torch.eye(len(items), dtype=torch.bool), 0)
    closest, typical = off.max(1).values, off.sum(1) / (len(items) - 1)
    # measured: planned 0.95, at least as close as the closest other item for 89% (the rest: near-duplicates)
    assert planned.mean() > 0.8 and (planned >= closest).float().mean() > 0.8, (planned.mean(), (planned >= closest).float().mean())
    assert planned.mean() > typical.mean() + 0.5, (planned.mean(), typical.mean())


def test_plans_and_images_depend_on_the_history_only(planner):
    model, _, histories, targets, _ = planner
    seq = torch.tensor([h + [0] for h in histories[:6]])
    batch = {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.full((6,), 3), model.ITEM_ID: torch.tensor(targets[:6])}
    other = dict(batch, **{model.ITEM_ID: torch.tensor(targets[6:12])})
    first, second = model.generate_images(Interaction(batch)), model.generate_images(Interaction(other))
    assert torch.equal(first.pixels, second.pixels) and torch.equal(first.plans, second.plans)
    assert torch.equal(model.full_sort_predict(Interaction(batch)), model.full_sort_predict(Interaction(other)))


def test_a_consumed_item_is_never_planned(planner):
    """What the plan head likes best for a history is the history's own subgroup; excluded (consumed) items are never
    planned even then, and the rest of the plans are unchanged in order."""
    model, _, histories, _, _ = planner
    seq = torch.tensor(histories[:8])
    batch = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.full((8,), 3)})
    favourites = model.full_sort_predict(batch).topk(2, dim=1).indices
    free = model.generate_images(batch, num_samples=4)
    excluded = model.generate_images(batch, num_samples=4, exclude=favourites)
    assert all(not set(row.tolist()) & set(ban.tolist()) for row, ban in zip(excluded.plans, favourites))
    assert any(set(row.tolist()) & set(ban.tolist()) for row, ban in zip(free.plans, favourites))  # the test means something
    for row, ban in zip(range(8), favourites):
        kept = [p for p in free.plans[row].tolist() if p not in ban.tolist()]
        assert excluded.plans[row].tolist()[:len(kept)] == kept


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_plan_sampling_is_seeded_distinct_and_identical_with_and_without_the_kv_cache(planner, guidance):
    model, _, histories, _, _ = planner
    core = model.core
    kwargs = dict(num_samples=3, temperature=0.7, plan_temperature=1.0, guidance_scale=guidance, seed=5)
    cached = core.generate_tokens(histories[:4], use_cache=True, **kwargs)
    again = core.generate_tokens(histories[:4], use_cache=True, **kwargs)
    full = core.generate_tokens(histories[:4], use_cache=False, **kwargs)
    for a, b in ((cached, again), (cached, full)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(len(set(row.tolist())) == 3 for row in cached[1])  # a user's images get distinct plans
    other_seed = core.generate_tokens(histories[:4], use_cache=True, **{**kwargs, "seed": 6})
    assert not torch.equal(other_seed[1], cached[1])


def test_semantic_plans_rank_items_by_their_code(emoji64, gtiny):
    model = make_model(gtiny, plan="semantic", plan_codes=8)
    core = model.core
    codes = core.plan_code[1:]
    assert len(set(codes.tolist())) > 4 and codes.max() < 8 and model.artifact_info["plan_codes"]["codes"] == 8
    seq = torch.tensor([[1, 2, 3], [40, 41, 0]])
    scores = model.full_sort_predict(Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.tensor([3, 2])}))
    with torch.no_grad():
        logits = core.plan_scores([[1, 2, 3], [40, 41]])
    assert torch.equal(scores[:, 1:], logits[:, core.plan_code[1:]]) and scores[:, 0].isneginf().all()
    tokens, plans = core.generate_tokens([[1, 2, 3]], num_samples=2, temperature=0.7, seed=1)
    assert plans.max() < 8 and tokens.shape == (1, 2, core.num_image_tokens)


def test_a_teacher_pulls_the_plan_towards_its_distribution(emoji64, gtiny):
    torch.manual_seed(0)
    model = make_model(gtiny, plan_teacher_weight=1.0, **PLAN)
    core = model.core
    histories = [[1, 2, 3]] * 16
    teacher = torch.zeros(16, core.item_num)
    teacher[:, 30] = 1.0  # a teacher sure of item 30, whatever the target says
    optimizer = torch.optim.Adam([p for p in core.parameters() if p.requires_grad], lr=3e-3)
    with torch.no_grad():
        before = core.plan_scores(histories[:1]).softmax(-1)[0, 30]
    for _ in range(30):
        optimizer.zero_grad()
        core.loss(histories, torch.full((16,), 5), plan_teacher=teacher).backward()
        optimizer.step()
    with torch.no_grad():
        after = core.plan_scores(histories[:1]).softmax(-1)[0]
    # the teacher's item becomes the plan (the target, item 5, does not); items whose image tokens equal item 30's
    # (emoji64 has near-duplicates) have its content vector, so its mass is shared with them
    twins = (core.tokens_of(torch.arange(core.item_num)) == core.tokens_of(torch.tensor([30]))).all(1)
    assert after[twins].sum() > 0.5 > before * twins.sum(), (before, after[twins])


def test_condition_dropout_rows_draw_from_the_null_plan(planner):
    core = planner[0].core
    targets = torch.tensor([4, 5])
    with torch.no_grad():
        kept = core.loss([[1, 2], [3]], targets, parts=True)["image"]
        dropped = core.loss([[1, 2], [3]], targets, no_plan=torch.tensor([True, False]), parts=True)["image"]
    assert dropped[0] != kept[0] and torch.isclose(dropped[1], kept[1])
    assert NO_PLAN == -1


def test_the_plan_head_on_a_saved_checkpoint_with_lora(emoji64, gtiny, tmp_path):
    tiny = make_core(gtiny)
    folder = save_tiny_checkpoint(tiny.backbone, tmp_path / "janus-tiny")
    model = make_model(gtiny, lmm_path=str(folder), finetune="lora", **PLAN)
    core = model.core
    assert core.backbone.is_pretrained and core.has_plan
    loss = core.loss([[1, 2, 3], []], torch.tensor([4, 5]))
    loss.backward()
    assert core.plan_query.weight.grad is not None and core.content_fields["group"].weight.grad is not None
    saved = set(model.state_dict())
    assert any("lora_" in k for k in saved) and any("plan_query" in k for k in saved)
    assert not any("vqmodel" in k for k in saved)  # a real checkpoint's own tokenizer is rebuilt, not saved
    tokens, plans = core.generate_tokens([[1, 2, 3]], num_samples=2, temperature=0.7, seed=0)
    assert (plans > 0).all() and tokens.shape == (1, 2, core.num_image_tokens)
