"""The 40-line PML loop a student would write: the reference the runner is measured against.

Random batches, Adam at a constant learning rate, no augmentation, no schedule, no
diagnostics, no checkpoints. Used by benchmarks/train_speed.py and benchmarks/small_data.py.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pytorch_metric_learning import losses, miners


def bare_cnn(in_channels: int, dim: int) -> torch.nn.Module:
    """A small CNN for 8–64 px images."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(128, dim))


def bare_train(x: torch.Tensor, y: torch.Tensor, *, epochs: int = 30, dim: int = 32, batch_size: int = 128,
               lr: float = 1e-3, loss: str = "triplet", seed: int = 0, model: torch.nn.Module | None = None):
    """Train on float images x (N×C×H×W in [0,1]); returns (model, seconds, steps)."""
    torch.manual_seed(seed)
    model = model or bare_cnn(x.shape[1], dim)
    if loss == "triplet":
        loss_fn, miner = losses.TripletMarginLoss(margin=0.2), miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    else:
        loss_fn, miner = losses.ContrastiveLoss(), miners.PairMarginMiner()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    t0, steps = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(y)))
        for i in range(0, len(y) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            emb = model(x[idx])
            loss_value = loss_fn(emb, y[idx], miner(emb, y[idx]))
            opt.zero_grad()
            loss_value.backward()
            opt.step()
            steps += 1
    return model, time.perf_counter() - t0, steps


@torch.inference_mode()
def bare_embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + 1024]) for i in range(0, len(x), 1024)])


if __name__ == "__main__":  # digits, the runner's default split: print 1-NN
    from sklearn.neighbors import KNeighborsClassifier
    from runner.config import DataConfig
    from runner.data import load_dataset, split_dataset
    s = split_dataset(load_dataset(DataConfig()), DataConfig())
    xtr, xte = s.train.images.float() / 255, s.test.images.float() / 255
    model, secs, steps = bare_train(xtr, s.train.labels)
    knn = KNeighborsClassifier(1).fit(bare_embed(model, xtr), s.train.labels)
    print(f"bare loop: 1-NN {knn.score(bare_embed(model, xte), s.test.labels):.4f} in {secs:.1f} s, {steps} steps")
