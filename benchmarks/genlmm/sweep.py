"""GenLMM designs and sampling settings on the VALIDATION split of a benchmark preset's dataset. Test is never
evaluated here: the defaults are chosen on these numbers and the main job reports test once.

    python benchmarks/genlmm/sweep.py --out benchmarks/genlmm/results/sweep [--designs plan-item ...] \\
        [--teacher results/<main job>/saved/SASRec/SASRec-....pth] [--preset default] [--dataset emoji-pop]
    python benchmarks/genlmm/sweep.py --list

Each *design* trains once with a preset's settings (``--preset``, default ``full``: properties/benchmark/full.yaml,
1,000 users, seed 2026, the GenLMM-SFT row's epochs) plus its overrides, then is validated under each *sampling*
setting (generation only; no retraining), by its images (gen_rank_by: images) and, with a plan head, by the plan
alone (gen_rank_by: plan); with ``--plan-only`` nothing is trained after the artifacts (epochs: 0: the catalogue
pre-training and the plan stage) and only the plan head is validated, a few minutes per design; designs listed in --shuffled are also validated with every user's history swapped for
another user's (targets kept). ``--dataset emoji-pop`` runs the same on the second built-in catalogue (its own folder
beside the preset's). One JSON per design; a finished design is skipped on rerun. The tokenizer and each
pre-training are cached under the dataset's .cache, as in the main job.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import resource
import time
from pathlib import Path

import torch
import yaml

PLAN = dict(plan="item", content_fields=["subgroup"])
DESIGNS = {
    "no-plan": dict(plan="none"),  # the previous default: draw straight from the history
    "plan-item": PLAN,
    "plan-item-no-content": dict(plan="item"),
    "plan-semantic": dict(plan="semantic", content_fields=["subgroup"]),
    "plan-item-history10": dict(PLAN, history_len=10),
    "plan-item-no-history": dict(PLAN, history_len=0),  # ablation: the plan from no history (popularity only)
    "plan-item-teacher": dict(PLAN, plan_teacher_file="@teacher", plan_teacher_weight=0.5),
    # the plan head's per-item terms, history match and plan stage (issue 28; plan-item is the default: item bias,
    # history match with the taste of recbole_gen/model/taste.py, no ID embedding, no plan stage); the designs above
    # predate them (results/plan-head's no-prior and prior-4 measured the history match's first, additive form)
    "content-only": dict(PLAN, plan_item_bias=False, plan_history_match=False),
    "item-bias": dict(PLAN, plan_history_match=False),
    "id-embedding": dict(PLAN, item_id_embedding=True),
    "plan-stage": dict(PLAN, plan_stage_steps=1000),
    "plan-stage-teacher": dict(PLAN, plan_stage_steps=1000, plan_teacher_file="@teacher", plan_teacher_weight=0.5),
    # drawing fidelity (how often a drawing's nearest item is its plan): a longer catalogue pre-training, and with it
    # the tokenizer's (the full preset's artifacts; the tokenizer's also changes the drawn twins' ceiling)
    "pretrain-1500": dict(PLAN, pretrain_steps=1500),
    "artifacts-1500": dict(PLAN, pretrain_steps=1500, vq_train_steps=1500),
}
SAMPLING = {
    "default": {},
    "greedy": dict(temperature=0.0),
    "T0.7": dict(temperature=0.7),  # the previous default temperature (without a plan, greedy draws one image twice)
    "plan-T0.5": dict(plan_temperature=0.5),
    "guidance2": dict(guidance_scale=2.0),
    "10 samples": dict(num_samples=10),
    "top-2 plans, greedy": dict(plan_temperature=0.05, temperature=0.0),
    "top-10 plans": dict(num_samples=10, plan_temperature=0.05),
    "top-10 plans, greedy": dict(num_samples=10, plan_temperature=0.05, temperature=0.0),
    "top-10 plans, greedy, guidance 2": dict(num_samples=10, plan_temperature=0.05, temperature=0.0, guidance_scale=2.0),
    "top-10 plans, greedy, guidance 5": dict(num_samples=10, plan_temperature=0.05, temperature=0.0, guidance_scale=5.0),
    "top-2 plans, greedy, guidance 2": dict(plan_temperature=0.05, temperature=0.0, guidance_scale=2.0),
}


def shared_config(preset="full", dataset=None):
    """The preset's shared config and its GenLMM-SFT row; another ``dataset`` lives beside the preset's folder."""
    from recbole_gen.comparison import load_preset

    preset = load_preset(preset)
    config = {**preset["config"], **{k: v for k, v in preset["rows"]["GenLMM-SFT"].items() if k not in ("model", "block")}}
    return config if dataset in (None, preset["dataset"]) else {**config, "data_path": f"{config['data_path']}-{dataset}"}


@contextlib.contextmanager
def shuffled_histories(valid_data, seed=0):
    """While open, the validation split has each user's history swapped for another user's (targets kept): what is
    left when the history says nothing about this user."""
    from recbole.data.interaction import Interaction

    dataset = valid_data._dataset
    original = dataset.inter_feat
    fields = dict(original.interaction)
    order = torch.randperm(len(original), generator=torch.Generator().manual_seed(seed))
    for field in (dataset.config["ITEM_ID_FIELD"] + dataset.config["LIST_SUFFIX"], dataset.config["ITEM_LIST_LENGTH_FIELD"]):
        fields[field] = fields[field][order]
    dataset.inter_feat = Interaction(fields)
    try:
        yield valid_data
    finally:
        dataset.inter_feat = original


def validate_sampling(model, trainer, valid_data, sampling):
    """Validation results of a trained model under each sampling setting (generation only)."""
    trained, results = model.settings, {}
    try:
        for label, setting in sampling.items():
            model.settings = dataclasses.replace(trained, **setting)
            begun = time.time()
            results[label] = {**trainer.evaluate(valid_data, load_best_model=False), "seconds": round(time.time() - begun, 1)}
    finally:
        model.settings = trained
    return results


def revalidate(target, sampling, threads):
    """More sampling settings for a design already trained (its JSON names its checkpoint)."""
    from recbole_gen.quick_start import build_trainer, load_data_and_model

    torch.set_num_threads(threads)
    result = json.loads(target.read_text())
    config, model, _, _, valid_data, _ = load_data_and_model(result["model_file"], checkpoint_paths=True)
    result["valid"].update(validate_sampling(model.eval(), build_trainer(config, model), valid_data, sampling))
    target.write_text(json.dumps(result, indent=1, default=float))


def run_design(name, overrides, sampling, threads, teacher=None, shuffled=False, preset="full", dataset=None,
               plan_only=False):
    from recbole_gen.utils import init_seed

    from recbole_gen.config import Config
    from recbole_gen.data import create_dataset, data_preparation
    from recbole_gen.quick_start import build_model, build_trainer
    from recbole_gen.utils import init_logger

    torch.set_num_threads(threads)
    overrides = {k: (teacher if v == "@teacher" else v) for k, v in overrides.items()}
    config = Config(model="GenLMM", dataset=dataset or "emoji-seq", config_dict={
        **shared_config(preset, dataset), **overrides, "log_dir": "results/genlmm-sweep/logs",
        "checkpoint_dir": f"results/genlmm-sweep/saved/{name}", "eval_step": 0, **({"epochs": 0} if plan_only else {})})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    started, load = time.time(), os.getloadavg()[0]
    train_data, valid_data, _ = data_preparation(config, create_dataset(config, images=True))
    if config["plan_teacher_file"] and not Path(config["plan_teacher_file"]).is_file():
        raise FileNotFoundError(f"--teacher {config['plan_teacher_file']} is not a file")
    model = build_model(config, train_data._dataset)
    prepared = time.time()
    trainer = build_trainer(config, model)
    trainer.fit(train_data, saved=True, show_progress=False)
    trained = time.time()
    result = {"design": name, "overrides": overrides, "model_file": trainer.saved_model_file,
              "artifacts": model.artifact_info, "steps": trainer.optimizer_steps,
              "prepare_s": round(prepared - started, 1), "train_s": round(trained - prepared, 1), "valid": {}}
    if not plan_only:
        result["valid"].update(validate_sampling(model, trainer, valid_data, sampling))
    if shuffled:
        with shuffled_histories(valid_data) as shuffled_data:
            result["valid"]["shuffled history"] = dict(trainer.evaluate(shuffled_data, load_best_model=False))
    if model.core.has_plan:
        trainer.rank_by = "plan"
        result["valid"]["plan ranking"] = dict(trainer.evaluate(valid_data, load_best_model=False))
    result.update(load_before=load, load_after=os.getloadavg()[0], threads=threads,
                  peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="*", default=list(DESIGNS))
    parser.add_argument("--sampling", nargs="*", default=["default"], help=f"of {list(SAMPLING)}")
    parser.add_argument("--shuffled", nargs="*", default=[], help="designs also validated with shuffled histories")
    parser.add_argument("--teacher", help="a SASRec checkpoint trained on the same split (design plan-item-teacher)")
    parser.add_argument("--out", default="benchmarks/genlmm/results/sweep")
    parser.add_argument("--preset", default="full", help="the benchmark preset whose data and GenLMM-SFT row to use")
    parser.add_argument("--dataset", default=None, help="another built-in dataset than the preset's (emoji-pop)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plan-only", action="store_true", help="no SFT: validate the plan head after the artifacts")
    parser.add_argument("--revalidate", action="store_true", help="only add --sampling settings to trained designs")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print(yaml.safe_dump({"designs": DESIGNS, "sampling": SAMPLING}, sort_keys=False))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = {label: SAMPLING[label] for label in args.sampling}
    for name in args.designs:
        target = out / f"{name}.json"
        if args.revalidate:
            revalidate(target, sampling, args.threads)
            continue
        if target.is_file():
            continue
        result = run_design(name, DESIGNS[name], sampling, args.threads, args.teacher, name in args.shuffled, args.preset,
                            args.dataset, args.plan_only)
        result["command"] = "python benchmarks/genlmm/sweep.py " + " ".join(os.sys.argv[1:])
        target.write_text(json.dumps(result, indent=1, default=float))
        print(json.dumps({"design": name, **{k: {m: round(v, 4) for m, v in r.items() if m in ("hit@10", "ndcg@10",
              "oracleutility", "novelty", "targetsim")} for k, r in result["valid"].items()}}, default=float))


if __name__ == "__main__":
    main()
