"""LayerEnsembles engine: layer-ensemble networks, training, export and one-pass inference with AULA.

This package is the engine layer. It depends on torch, numpy and SimpleITK only, and never imports
slicer or qt; the scene logic (``LayerEnsemblesLib.scene``) and the Slicer widget build on it.
"""

__version__ = "0.1.0"
