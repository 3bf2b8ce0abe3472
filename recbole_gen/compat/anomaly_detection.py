"""RecBole 1.2.1's ``recbole/model/sequential_recommender/sine.py`` (line 25) calls
``torch.autograd.set_detect_anomaly(True)`` when it is imported, and ``recbole.model.sequential_recommender``
imports it with every other sequential model: anomaly detection, a debugging aid, then stays on for the whole
process and every backward pass runs about twice as slowly (GenLMM SFT: about 4,000 -> 2,400 image tokens/s after a
SASRec run in the same process). The patch imports the package once and switches detection back off.
"""
import torch


def patch_anomaly_detection():
    import recbole.model.sequential_recommender  # noqa: F401  (its import turns detection on)

    torch.autograd.set_detect_anomaly(False)
