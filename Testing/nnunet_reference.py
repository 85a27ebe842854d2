"""The two sides of the nnU-Net faithfulness tests: nnUNetPredictor's own prediction and the engine's.

Shared by the 3D and 2D converter tests so that both compare against nnU-Net set up the same way
(mirroring off, step 0.5, Gaussian weights, CPU) and read the engine's final head the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from LayerEnsemblesLib.convert.nnunet import find_model_folder, find_trainer_class, load_checkpoint
from LayerEnsemblesLib.inference import Predictor


def nnunet_prediction(
    model_dir: Path, folds: list[str], images: list[sitk.Image]
) -> tuple[np.ndarray, np.ndarray]:
    """nnUNetPredictor's segmentation and probabilities for ``folds`` of the model folder ``model_dir``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = find_model_folder(model_dir, None)
    checkpoints = [load_checkpoint(model_dir / f"fold_{f}" / "checkpoint_final.pth") for f in folds]
    plans_manager = PlansManager(model.plans)
    configuration = plans_manager.get_configuration(model.configuration)
    trainer = find_trainer_class(checkpoints[0]["trainer_name"], str(model_dir))
    network = trainer.build_network_architecture(
        plans_manager,
        configuration,
        len(images),
        plans_manager.get_label_manager(model.dataset).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration,
        [c["network_weights"] for c in checkpoints],
        model.dataset,
        checkpoints[0]["trainer_name"],
        None,
    )
    array = np.stack([sitk.GetArrayFromImage(i) for i in images]).astype(np.float32)
    properties = {"spacing": list(images[0].GetSpacing())[::-1]}
    segmentation, probabilities = predictor.predict_single_npy_array(array, properties, None, None, True)
    return segmentation, probabilities


def our_prediction(model: Path, images: list[sitk.Image]) -> tuple[np.ndarray, np.ndarray]:
    """The engine's segmentation and probabilities from the converted archive's final head alone."""
    predictor = Predictor(model, device="cpu")
    last = predictor.metadata.num_heads - 1
    prediction = predictor.predict(sitk.Compose(images), skip_heads=last, maps=None)
    probabilities = np.moveaxis(sitk.GetArrayFromImage(prediction.probabilities), -1, 0)
    return sitk.GetArrayFromImage(prediction.segmentation), probabilities
