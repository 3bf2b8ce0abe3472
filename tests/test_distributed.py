"""Multi-process runs on this CPU machine (2 processes, gloo, one thread each): an SFT step on 2 ranks x B/2 equals
1 rank x B; evaluation on 2 ranks equals 1 rank, FD / ImageCoverage / Diversity included, on a user count that makes
the sampler pad; RL ranks draw disjoint rows, stay identical and share one checkpoint; a budget stop on one rank
does not hang the other; RecBole's SASRec runs with --nproc=2 end to end."""
import time

import pytest
import torch
import torch.multiprocessing as mp
from recbole.data import data_preparation

from recbole_gen.checkpoint import load_checkpoint
from recbole_gen.config import Config
from recbole_gen.data import create_dataset
from recbole_gen.quick_start import build_model, build_trainer, run, run_recbole
from recbole_gen.trainer.loop import Budget
from test_genlmm_support import emoji64, free_port, gtiny, recbole_config, write_dataset  # noqa: F401

IMAGE_METRICS = ["Hit", "NDCG", "TargetSim", "FD", "ImageCoverage", "Diversity"]
USERS = 81  # an odd number of test users: the DistributedSampler repeats one to fill the second rank


@pytest.fixture(scope="module")
def data(tmp_path_factory, emoji64, gtiny):
    """(data_path, cache_dir): the 64-emoji dataset with 81 users (8 interactions each) and the shared VQ cache."""
    return write_dataset(tmp_path_factory.mktemp("ddp"), emoji64, n_users=USERS), gtiny[1]


def _config(data, tmp_path, **overrides):
    data_path, cache = data
    return recbole_config(data_path, cache_dir=str(cache), checkpoint_dir=str(tmp_path / "saved"),
                          log_dir=str(tmp_path / "log"), **overrides)


def _run(model, config, nproc):
    """``run_recbole`` as the CLI runs it (``--nproc``), one thread per process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if nproc == 1:
            return run_recbole(model=model, dataset=config.get("dataset"), config_dict=config)
        return run(model, config.get("dataset"), config_dict=config, nproc=nproc, port=free_port())
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_sft_step_on_two_ranks_equals_one_rank(gtiny, tmp_path, strategy):
    # 80 users x 5 training rows: one batch of 400 rows on one rank, 200 + 200 (rows 0, 2, ... and 1, 3, ...) on two.
    # Plain SGD: Adam's first step divides by |gradient| and so magnifies float rounding of near-zero gradients.
    # fsdp: the two ranks each hold half of every parameter; the checkpoint is the full state, as one rank's
    config = _config(gtiny, tmp_path, epochs=1, eval_step=0, train_batch_size=400, learner="sgd", learning_rate=1.0,
                     weight_decay=0.0, warmup_steps=0, gradient_accumulation_steps=1, shuffle=False, metrics=["Hit"],
                     valid_metric="Hit@10", num_samples=1, dist_strategy=strategy)
    init, one, two = (_run("GenLMM", {**config, "checkpoint_dir": str(tmp_path / name), "epochs": epochs}, nproc)
                      for name, epochs, nproc in (("init", 0, 1), ("one", 1, 1), ("two", 1, 2)))
    init, first, second = (load_checkpoint(r["model_file"])["state_dict"] for r in (init, one, two))
    assert first.keys() == second.keys()
    assert max((first[k].float() - init[k].float()).abs().max().item() for k in first) > 1e-3  # the step moved them
    for key in first:
        torch.testing.assert_close(second[key], first[key], atol=1e-6, rtol=0, msg=key)


def test_evaluation_on_two_ranks_equals_one_rank(data, tmp_path):
    config = _config(data, tmp_path, epochs=0, metrics=IMAGE_METRICS, eval_fd_per_user=True)
    one = _run("GenLMM", config, nproc=1)
    two = _run("GenLMM", {**config, "checkpoint_dir": str(tmp_path / "two")}, nproc=2)
    assert one["test_users"] == USERS
    assert set(one["test_result"]) >= {"hit@10", "targetsim", "fd", "imagecoverage", "diversity"}
    for key, value in one["test_result"].items():
        assert two["test_result"][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    assert len(two["test_per_user"]["user"]) == len(set(two["test_per_user"]["user"].tolist())) == USERS
    for key, values in one["test_per_user"].items():  # every user once, in the same order
        torch.testing.assert_close(torch.as_tensor(two["test_per_user"][key]), torch.as_tensor(values),
                                   equal_nan=True, msg=key)


def _ranks(worker, *args, timeout=300):
    """``worker(rank, *args)`` on 2 spawned ranks; fails (instead of hanging the suite) if they do not finish."""
    ranks = mp.spawn(worker, args=args, nprocs=2, join=False)
    deadline = time.time() + timeout
    while not ranks.join(timeout=1):
        if time.time() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout} s (a collective that one rank never reached?)")


def _rank_config(config, rank, port):
    return Config(model="GenLMM", dataset="gtiny", config_dict={
        **config, "local_rank": rank, "world_size": 2, "nproc": 2, "offset": 0, "ip": "127.0.0.1", "port": port})


def _rl_and_budget_rank(rank, config, port, out):
    """One RL step (recording the rows this rank drew), its checkpoint, then an SFT run whose wall-clock budget
    only rank 1 reaches."""
    torch.set_num_threads(1)
    rl_config = _rank_config({**config, "stage": "rl"}, rank, port)
    train_data, _, _ = data_preparation(rl_config, create_dataset(rl_config, images=True))
    trainer = build_trainer(rl_config, build_model(rl_config, train_data._dataset))
    rewards = trainer.build_rewards(train_data)
    drawn = []
    trainer.rewards = lambda rollout: (drawn.extend(rollout.user_ids.tolist()), rewards(rollout))[1]
    trainer._rl_step(train_data._dataset.inter_feat)
    trainer._save_rl_checkpoint(verbose=False)
    saved = load_checkpoint(trainer.saved_model_file)["state_dict"]
    state = trainer.model.state_dict()
    result = {"drawn": drawn, "file": trainer.saved_model_file, "params": {k: state[k] for k in saved},
              "loads_as_own": all(torch.equal(v, state[k]) for k, v in saved.items())}

    sft_config = _rank_config({**config, "checkpoint_dir": config["checkpoint_dir"] + "-sft"}, rank, port)
    train_data, valid_data, _ = data_preparation(sft_config, create_dataset(sft_config, images=True))
    trainer = build_trainer(sft_config, build_model(sft_config, train_data._dataset))
    if rank == 1:
        trainer.budget = Budget(1e-6)  # exhausted after the first batch, on this rank alone
    trainer.fit(train_data, valid_data, saved=False)
    result.update(steps=trainer.steps.step_count, epochs=len(trainer.train_loss_dict))
    torch.save(result, f"{out}/rank{rank}.pt")


def test_rl_ranks_draw_disjoint_rows_stay_identical_and_share_one_checkpoint(gtiny, tmp_path):
    config = _config(gtiny, tmp_path, rl_batch_size=4, rl_group_size=2, rl_learning_rate=1e-2, rl_recommender_weight=0.0,
                     rl_diversity_weight=0.0, rl_reward_encoder="pixel", rl_log_every=0, epochs=3, train_batch_size=32)
    _ranks(_rl_and_budget_rank, config, free_port(), str(tmp_path))
    zero, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert len(zero["drawn"]) == len(one["drawn"]) == 4 and not set(zero["drawn"]) & set(one["drawn"])
    assert zero["file"] == one["file"] and len(list((tmp_path / "saved").glob("*.pth"))) == 1
    assert zero["loads_as_own"] and one["loads_as_own"]
    for key, value in zero["params"].items():
        assert torch.equal(value, one["params"][key]), key
    # the budget ran out on rank 1 after its first batch: both ranks stopped there, nobody waited forever
    assert zero["steps"] == one["steps"] == 1 and zero["epochs"] == one["epochs"] == 1


def _fsdp_rank(rank, config, port, out):
    """A sharded SFT epoch and its checkpoint, then RecBole's resume of that checkpoint into a fresh sharded model;
    the settings FSDP refuses."""
    from recbole_gen.model import sharding

    torch.set_num_threads(1)
    settings = {**config, "dist_strategy": "fsdp"}
    config = _rank_config(settings, rank, port)
    train_data, _, _ = data_preparation(config, create_dataset(config, images=True))
    trainer = build_trainer(config, build_model(config, train_data._dataset))
    weight = dict(trainer.model.named_parameters())["core.lmm.model.language_model.layers.0.mlp.up_proj.weight"]
    trainer.fit(train_data, saved=True)
    resumed = build_trainer(config, build_model(config, train_data._dataset))
    resumed.resume_checkpoint(trainer.saved_model_file)
    result = {"file": trainer.saved_model_file, "sharded": sharding.is_sharded(trainer.model),
              "rows": (weight.to_local().shape[0], weight.shape[0]),
              "model": resumed.model.state_dict(), "optimizer": sharding.full_optimizer_state_dict(resumed.model, resumed.optimizer)}
    refused = {}
    for name, overrides in (("lora", {"finetune": "lora"}), ("rl", {"stage": "rl"})):
        try:
            other = _rank_config({**settings, **overrides}, rank, port)
            build_trainer(other, build_model(other, train_data._dataset))
        except ValueError as error:
            refused[name] = str(error)
    result["refused"] = refused
    torch.save(result, f"{out}/fsdp{rank}.pt")


def test_fsdp_shards_saves_one_full_checkpoint_and_resumes_from_it(gtiny, tmp_path):
    config = _config(gtiny, tmp_path, epochs=1, eval_step=0, train_batch_size=200, num_samples=1, metrics=["Hit"])
    _ranks(_fsdp_rank, config, free_port(), str(tmp_path))
    zero, one = (torch.load(tmp_path / f"fsdp{r}.pt", weights_only=False) for r in (0, 1))
    assert zero["sharded"] and zero["rows"][0] * 2 == zero["rows"][1]  # each rank holds half of a layer's weight
    assert zero["file"] == one["file"] and len(list((tmp_path / "saved").glob("*.pth"))) == 1
    saved = load_checkpoint(zero["file"])
    assert saved["state_dict"].keys() == zero["model"].keys()
    for key, value in saved["state_dict"].items():  # a full, unsharded state: what a one-process run saves
        assert value.shape == zero["model"][key].shape and torch.equal(value, zero["model"][key]), key
    state = saved["optimizer"]["state"]
    assert state and state.keys() <= zero["optimizer"]["state"].keys()  # (unused heads start fresh on resume)
    for name, moments in state.items():  # full Adam moments, keyed by parameter name, back in the resumed shards
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(zero["optimizer"]["state"][name][moment], moments[moment], msg=name)
    for refused in (zero["refused"], one["refused"]):
        assert "finetune: full" in refused["lora"] and "dist_strategy: ddp" in refused["rl"]
    # one process cannot resume the sharded optimizer state: it says how to, instead of torch's KeyError
    single = Config(model="GenLMM", dataset="gtiny", config_dict=config)
    train_data, _, _ = data_preparation(single, create_dataset(single, images=True))
    with pytest.raises(ValueError, match="dist_strategy=fsdp, or start a new run from its weights with init_from"):
        build_trainer(single, build_model(single, train_data._dataset)).resume_checkpoint(zero["file"])


def _catalogue(config, counted=None):
    """The evaluation catalogue of ``config``'s dataset, its encoder's rows counted into ``counted``."""
    from recbole_gen.ranks import rank0_first
    from recbole_gen.retrieval.catalogue import ImageCatalogue
    from recbole_gen.retrieval.encoders import build_image_encoder_from_config

    with rank0_first():
        store = create_dataset(config, images=True).image_store
    encoder = build_image_encoder_from_config(config, "eval_encoder")
    encode = encoder.encode
    encoder.encode = lambda pixels: (counted.append(len(pixels)) if counted is not None else None, encode(pixels))[1]
    catalogue = ImageCatalogue.from_store(store, encoder, index_config=config, fd_dim=config["eval_fd_dim"])
    found = catalogue.index.search(catalogue.embeddings[1:17], 5)
    return {"embeddings": catalogue.embeddings, "found": found, "fd": catalogue.fd_projection,
            "items": int(catalogue.has_image.sum())}


def _catalogue_rank(rank, config, port, out):
    torch.set_num_threads(1)
    counted = []
    result = _catalogue(_rank_config(config, rank, port), counted)
    torch.save({**result, "encoded": sum(counted)}, f"{out}/catalogue{rank}.pt")


def test_catalogue_is_encoded_a_share_per_rank_and_its_index_built_once(data, tmp_path):
    settings = {**_config(data, tmp_path), "eval_index": "ivf", "eval_index_nlist": 2, "eval_fd_dim": 8}
    one = _catalogue(Config(model="GenLMM", dataset="gtiny", config_dict={**settings, "cache_dir": str(tmp_path / "one")}))
    _ranks(_catalogue_rank, {**settings, "cache_dir": str(tmp_path / "two")}, free_port(), str(tmp_path))
    zero, other = (torch.load(tmp_path / f"catalogue{r}.pt", weights_only=False) for r in (0, 1))
    assert zero["encoded"] + other["encoded"] == one["items"] and abs(zero["encoded"] - other["encoded"]) <= 1
    assert len(list((tmp_path / "two").rglob("faiss-index/index-*.pt"))) == 1  # rank 0 built it, rank 1 read it
    for result in (zero, other):
        torch.testing.assert_close(result["embeddings"], one["embeddings"])
        torch.testing.assert_close(result["fd"], one["fd"])
        for got, want in zip(result["found"], one["found"]):
            torch.testing.assert_close(got, want)


def test_recbole_sasrec_runs_on_two_processes(tmp_path):
    result = _run("SASRec", {"dataset": "ml-100k", "data_path": str(tmp_path / "data"), "epochs": 1,
                             "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, "MAX_ITEM_LIST_LENGTH": 10,
                             "train_batch_size": 1024, "eval_batch_size": 4096, "show_progress": False,
                             "checkpoint_dir": str(tmp_path / "saved"), "log_dir": str(tmp_path / "log")}, nproc=2)
    assert result["test_users"] == 943 and 0 < result["test_result"]["hit@10"] < 1
    assert len(result["test_per_user"]["user"]) == 943  # the whole test set, gathered from both ranks


def test_a_wrong_dataset_fails_before_any_process_starts(tmp_path, monkeypatch):
    from recbole_gen.data.builtin import DatasetNotFoundError

    monkeypatch.setattr(mp, "spawn", lambda *a, **k: pytest.fail("processes were started"))
    with pytest.raises(DatasetNotFoundError, match="no-such-data"):
        run("SASRec", "no-such-data", config_dict={"data_path": str(tmp_path)}, nproc=2)
