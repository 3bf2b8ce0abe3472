"""Ceilings: what the drawing can reach, apart from the taste. Evaluation only, on the VALIDATION split.

    python benchmarks/genlmm/ceilings.py --model-file results/<main job>/saved/GenLMM-SFT/GenLMM-....pth \\
        --sasrec-file results/<main job>/saved/SASRec/SASRec-....pth --out benchmarks/genlmm/results/ceilings.json

1. Render fidelity: GenLMM draws every catalogue item from its own "draw this item" prompt (the catalogue
   pre-training's layout: no history, the item as the plan), at temperature 0 and at the evaluation temperature;
   how often is the drawing's nearest catalogue item (evaluation encoder) the item itself (or a pixel-identical
   duplicate)? Beside it, the same for the tokenizer's own reconstruction.
2. Pseudo-generators through the same evaluator and metrics as every row: the tokenizer's reconstruction and
   GenLMM's redraw (its plan forced) of the true next item (the ceiling of any generator with this tokenizer),
   of the last history item, and of SASRec's top-n items (n = the model's num_samples).
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch
from recbole.data.interaction import Interaction

from recbole_gen.model.generative import Generation, GenerativeRecommender


class Redraw(GenerativeRecommender):
    """A trained GenLMM drawing chosen items (its plan forced): ``source(interaction) -> [B, n]`` item ids."""

    def __init__(self, genlmm, source, reconstruct=False):
        torch.nn.Module.__init__(self)
        self.genlmm, self.source, self.reconstruct = genlmm, source, reconstruct
        self.ITEM_SEQ, self.ITEM_SEQ_LEN, self.ITEM_ID = genlmm.ITEM_SEQ, genlmm.ITEM_SEQ_LEN, genlmm.ITEM_ID
        self.device = genlmm.device

    @torch.no_grad()
    def generate_images(self, interaction, num_samples=None, seed=None, **generation):
        items = self.source(interaction)
        core = self.genlmm.core
        if self.reconstruct:
            return Generation(pixels=core.decode(core.tokens_of(items)), plans=items.cpu(), histories=[])
        return self.genlmm.generate_images(interaction, num_samples=items.shape[1], plans=items)


def fidelity(model, catalogue, temperatures, instruction):
    """Share of catalogue items whose drawing (or reconstruction) has itself as nearest item (evaluation encoder)."""
    core = model.core
    items = torch.nonzero(model.store.has_image).flatten()
    draw_this = core.prompt.with_instruction(instruction)
    out = {}
    for name, temperature in [("reconstruction", None), *[(f"T={t}", t) for t in temperatures]]:
        hits = 0
        for chunk in torch.split(items, 256):
            if temperature is None:
                pixels = core.decode(core.tokens_of(chunk))
            else:
                tokens, _ = core.generate_tokens([[] for _ in chunk], temperature=temperature, seed=0,
                                                 plans=chunk.view(-1, 1), prompt=draw_this)
                pixels = core.decode(tokens[:, 0])
            _, nearest = catalogue.index.search(catalogue.encode(pixels), 1)
            same = (catalogue.embeddings[nearest[:, 0]] == catalogue.embeddings[chunk]).all(1)
            hits += int(same.sum())
        out[name] = round(hits / len(items), 4)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", required=True, help="a GenLMM checkpoint with plan: item")
    parser.add_argument("--sasrec-file", required=True, help="a SASRec checkpoint on the same split")
    parser.add_argument("--out", default="benchmarks/genlmm/results/ceilings.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from recbole_gen.quick_start import build_trainer, load_data_and_model
    from recbole_gen.retrieval.catalogue import ImageCatalogue
    from recbole_gen.model.frozen import load_recommender

    started, load = time.time(), os.getloadavg()[0]
    config, model, dataset, train_data, valid_data, _ = load_data_and_model(args.model_file, checkpoint_paths=True)
    model.eval()
    catalogue = ImageCatalogue.from_config(config, model.store)
    sasrec = load_recommender(args.sasrec_file, train_data._dataset)
    n = model.settings.num_samples

    def target(inter):
        return inter[model.ITEM_ID].view(-1, 1)

    def last(inter):
        return model.gather_indexes(inter[model.ITEM_SEQ].unsqueeze(-1), inter[model.ITEM_SEQ_LEN] - 1).view(-1, 1)

    def sasrec_top(inter):
        probs = sasrec.probs(inter[model.ITEM_SEQ].cpu(), inter[model.ITEM_SEQ_LEN].cpu())
        history = inter[model.ITEM_SEQ].cpu()
        probs[torch.arange(len(probs)).unsqueeze(1), history] = 0  # RecBole masks training items the same way
        return probs.topk(n, dim=1).indices.to(inter[model.ITEM_SEQ].device)

    result = {"model_file": args.model_file, "sasrec_file": args.sasrec_file, "num_samples": n,
              "fidelity": fidelity(model, catalogue, [0.0, model.settings.temperature], config["pretrain_instruction"])}
    for name, source in (("true next item", target), ("last history item", last), (f"SASRec top-{n}", sasrec_top)):
        for kind, reconstruct in (("tokenizer reconstruction", True), ("GenLMM redraw", False)):
            trainer = build_trainer(config, Redraw(model, source, reconstruct))
            result[f"{kind} of the {name}"] = dict(trainer.evaluate(valid_data, load_best_model=False))
    result.update(seconds=round(time.time() - started, 1), load_before=load, load_after=os.getloadavg()[0],
                  threads=args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
