"""Stage 5, predict: full-scene inference streamed by row bands (see :mod:`eoforge.predict.engine`).

``engine`` runs the windows and assembles the outputs, ``blend`` holds the window weights and the row-band plan,
``backends`` builds the predictor (torch fp32/bf16/AMP, ONNX Runtime), ``outputs`` writes the COGs and
``vectorize`` turns the class map into polygons block by block.
"""

from eoforge.predict.engine import PredictOptions, PredictResult, output_dtype, predict, predict_scene

__all__ = ["PredictOptions", "PredictResult", "output_dtype", "predict", "predict_scene"]
