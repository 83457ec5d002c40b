"""The code of every logged model (MLflow models-from-code): the VAE or autoencoder rebuilt from its weights-only
checkpoint, no pickle.

bench.tracking.ChildRun.log_model logs this file with the checkpoint and the vae package; MLflow runs it
when `mlflow.pyfunc.load_model(uri)` loads the model, so it may import only mlflow, numpy, torch and vae.
"""

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

# the model's artifact that bench.tracking logs (MODEL_CHECKPOINT): vae.train.save_checkpoint's file,
# read with weights_only=True
CHECKPOINT = "checkpoint"
PIXELS = 784  # 28 x 28 images, flattened


class CheckpointModel(PythonModel):
    """`predict(images)`: (N, 784) float32 pixels in [0, 1] -> their reconstructions (N, 784) in [0, 1].

    `.model` is the torch module itself (`VAE` with sample/encode/decode, or `Autoencoder`), in eval
    mode on the CPU; `.train_config` the TrainConfig it was trained with.
    """

    model = None
    train_config = None

    def load_context(self, context) -> None:
        # vae comes with the model (code_paths), so it is importable only once MLflow loads it
        from vae.train import load_checkpoint

        self.model, self.train_config = load_checkpoint(context.artifacts[CHECKPOINT])

    # np.ndarray: MLflow takes the input as it comes (it infers no schema from this hint)
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from vae.evaluate import reconstruct

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32)).reshape(-1, PIXELS)  # (N, 784)
        with torch.no_grad():
            return reconstruct(self.model, x).numpy()  # (N, 784): the decoder's mean at each image's code


mlflow.models.set_model(CheckpointModel())
