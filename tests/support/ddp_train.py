"""Run under torchrun: train a small model on a synthetic ArraySet into argv[1]."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.arrays import make_arrays

from hepascope.train.trainer import TrainConfig, train

if __name__ == "__main__":
    cfg = TrainConfig(model="resnet18", epochs=2, batch_size=8, num_threads=1, device="cpu",
                      model_args=(("width", 8),), patience=5)
    train(make_arrays(), cfg, sys.argv[1], progress=False)
