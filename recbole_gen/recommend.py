"""``recbole-gen recommend``: what a trained model recommends to a user, for any model.

Both kinds start from the user's test-time history (everything before their last interaction), as RecBole's
``recbole.utils.case_study`` does. A ranker's top-k items come from RecBole's own ``full_sort_topk`` (the padding
item and, for a general model, the user's training items masked, as RecBole masks them); a generator draws images
from that history, and each image's nearest catalogue items under the evaluation encoder stand in for its
recommendations, as they do in its evaluation.
"""
from pathlib import Path

import numpy as np
from recbole.utils.case_study import full_sort_topk

from recbole_gen.model.generative import GenerativeRecommender, UnknownUserError, internal_user
from recbole_gen.retrieval.catalogue import ImageCatalogue


def recommend(config, model, test_data, user, k, num_samples=None, seed=None, out_dir=None):
    """``user``'s top ``k`` catalogue items as rows ``{"user", "image", "rank", "item", "score"}``; ``image`` is None
    for a ranker and, for a generator, the number of the drawn image whose nearest items they are (with ``out_dir``,
    its PNG is ``<out_dir>/<user>/0000_<image>.png``, beside a manifest.json)."""
    dataset = test_data.dataset
    uid = internal_user(dataset, user)
    rows = np.flatnonzero(dataset.inter_feat[dataset.uid_field].numpy() == uid)
    if test_data.is_sequential and not len(rows):
        raise UnknownUserError(f"user '{user}' has no test interaction in dataset '{dataset.dataset_name}', so there "
                               f"is no test-time history to recommend from")
    if isinstance(model, GenerativeRecommender):
        inter = dataset.inter_feat[rows[:1]]
        history = inter[model.ITEM_SEQ][0, :int(inter[model.ITEM_SEQ_LEN][0])].tolist()
        drawn = model.generate(histories=[history], num_samples=num_samples, seed=seed,
                               out_dir=None if out_dir is None else Path(out_dir) / str(user))
        catalogue = ImageCatalogue.from_config(config, model.store)
        scores, items = catalogue.index.search(catalogue.encode(drawn.pixels[0]), k)
    else:
        scores, items = full_sort_topk(np.array([uid]), model, test_data, k, device=config["device"])
    tokens = dataset.id2token(dataset.iid_field, items.clamp(min=0).numpy())
    return [{"user": str(user), "image": image if isinstance(model, GenerativeRecommender) else None, "rank": rank + 1,
             "item": str(tokens[image, rank]), "score": float(scores[image, rank])}
            for image in range(len(items)) for rank in range(items.shape[1])
            if items[image, rank] > 0 and np.isfinite(float(scores[image, rank]))]  # not padding, not masked
