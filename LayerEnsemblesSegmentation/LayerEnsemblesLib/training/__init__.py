"""Deep-supervision training of layer-ensemble networks and export of their runs as model files.

``train(config)`` is the Python entry point (the ``layer-ensembles train`` command and the evaluation
scripts both call it); ``resume(run_dir)`` continues a run; ``export_run(run_dir)`` writes a model file.
"""

from .config import TrainConfig
from .export import export_run, read_run_config
from .loop import resume, train

__all__ = ["TrainConfig", "export_run", "read_run_config", "resume", "train"]
