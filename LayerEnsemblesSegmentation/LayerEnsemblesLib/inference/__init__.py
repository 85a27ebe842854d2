"""One-pass inference with layer agreement and AULA.

Usage::

    from LayerEnsemblesLib.inference import Predictor

    predictor = Predictor("model.pt", device="auto")          # 'cpu', 'cuda', 'cuda:1'
    prediction = predictor.predict(sitk_image, maps=("agreement", "entropy"))
    prediction.segmentation      # UInt8 label map on the input's grid
    prediction.maps["agreement"]  # fraction of kept heads that agree with the ensemble, in [0, 1]
    prediction.aula.normalized["union"], prediction.decision
    other = prediction.recombine(skip_heads=3)                # no new forward pass

See :mod:`.predictor` (loading, sliding window, memory), :mod:`.reduction` (streaming over heads),
:mod:`.results` (predictions and recombination) and :mod:`LayerEnsemblesLib.uncertainty` (definitions).
"""

from ..uncertainty import DEFAULT_AULA_THRESHOLD, AulaResult
from .predictor import Predictor
from .results import Prediction

__all__ = ["DEFAULT_AULA_THRESHOLD", "AulaResult", "Prediction", "Predictor"]
