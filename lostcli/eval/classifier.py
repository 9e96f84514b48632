"""Class accuracy in reports: what every table records beside an accuracy given by the render classifier.

The classifier itself (network, loading, inference, accuracy on real renders) is `models/classifier.py`;
it is trained by `train/classifier.py` (`lost eval classifier`) and used here by `eval/recon.py` and
`eval/gen.py`.
"""

from __future__ import annotations

from ..models.classifier import LoadedClassifier


def classifier_report(classifier: LoadedClassifier | None) -> dict:
    """What every report records beside a class accuracy: chance, the classifier's own test accuracy on real
    renders (per shape, per view) and where it came from (all None without a classifier)."""
    if classifier is None:
        return {"chance": None, "classifier_test_acc": None, "classifier_test_acc_per_view": None, "classifier": None}
    ev = classifier.test_eval
    return {"chance": 1.0 / len(classifier.model.categories) if classifier.model.categories else None,
            "classifier_test_acc": classifier.test_accuracy,
            "classifier_test_acc_per_view": float(ev["per_view_acc"]) if ev else None,
            "classifier": str(classifier.path)}
