"""Stage 4, evaluate: metrics, baselines and the HTML report (one concept per module)."""

from eoforge.evaluate.metrics import metrics_from_confusion
from eoforge.evaluate.scoring import evaluate

__all__ = ["evaluate", "metrics_from_confusion"]
