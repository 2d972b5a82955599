"""Trunks: every backbone at its minimum image size, local pretrained weights, freeze_trunk.

Tiny on purpose: 4-image batches of the smallest images each trunk takes, two optimiser steps.
"""

import numpy as np
import pytest
import torch

from runner import dist, store
from runner.config import ConfigError, EmbeddingConfig, ModelConfig, run_id
from runner.data import ImageSet
from runner.data.augment import AugmentPolicy
from runner.spec import resolve
from runner.launch.run import run_one
from runner.training import engine
from runner.training.models import build_model, check_pretrained, min_image_size
from runner.training.parts import build_parts
from tests.conftest import tiny_layer

# the smallest square image each trunk forwards: vgg16 halves the map five times without padding
MIN_SIZE = {"small_cnn": 1, "resnet18": 1, "resnet50": 1, "vgg16": 32}


def tiny_set(channels: int, size: int, n_classes: int = 2, per_class: int = 4) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    n = n_classes * per_class
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return ImageSet(images, labels, [str(c) for c in range(n_classes)], torch.arange(n))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "vgg16"])
def test_backbone_builds_forwards_at_its_minimum_size_and_trains_two_steps(backbone):
    cfg = resolve(tiny_layer(batch_size=4, samples_per_class=2), {"model": {"backbone": backbone},
                                                                   "miner": {"name": None}})
    size = min_image_size(cfg.model, 1, 1, 1) or 1
    assert size == MIN_SIZE[backbone]
    if size > 1:  # one pixel less and the trunk's feature map vanishes
        assert min_image_size(cfg.model, 1, size - 1, size - 1) == size
    train = tiny_set(1, size)
    torch.set_num_threads(1)
    parts = build_parts(cfg.model, cfg.embedding, cfg.loss, cfg.miner, cfg.train, cfg.seed, train, AugmentPolicy(),
                        dist.DistEnv(), torch.device("cpu"))
    assert parts.model(train.images[:4]).shape == (4, cfg.embedding.dim)
    before = {k: v.clone() for k, v in parts.model.trunk.state_dict().items()}
    losses = [float(engine.train_step(parts, train.images[idx], train.labels[idx], None)[0])
              for idx in parts.sampler.batches(1)[:1] * 2]
    assert len(losses) == 2 and np.isfinite(losses).all()
    changed = [k for k, v in parts.model.trunk.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "two optimiser steps left every trunk weight as it was"


def trunk_file(tmp_path, cfg: ModelConfig, channels: int = 1, size: int = 8, seed: int = 7):
    """A trunk's weights as torch.save(trunk.state_dict()) writes them, and the model they came from."""
    torch.manual_seed(seed)
    source = build_model(cfg, EmbeddingConfig(dim=8), channels, size, torch.zeros(channels), torch.ones(channels))
    path = tmp_path / f"{cfg.backbone}-trunk.pt"
    torch.save(source.trunk.state_dict(), path)
    return path, source


def test_local_pretrained_trunk_gives_identical_embeddings(tmp_path):
    cfg = ModelConfig(backbone="resnet18")
    path, source = trunk_file(tmp_path, cfg)
    loaded_cfg = ModelConfig(backbone="resnet18", pretrained=str(path))
    check_pretrained(loaded_cfg, 1, 8)  # the check before submission accepts it
    torch.manual_seed(123)  # another init: only the file can make the trunks equal
    loaded = build_model(loaded_cfg, EmbeddingConfig(dim=8), 1, 8, torch.zeros(1), torch.ones(1))
    fresh = build_model(cfg, EmbeddingConfig(dim=8), 1, 8, torch.zeros(1), torch.ones(1))
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        want = source.eval().trunk(x)
        assert torch.equal(loaded.eval().trunk(x), want)
        assert not torch.allclose(fresh.eval().trunk(x), want)


def test_pretrained_weights_of_another_trunk_are_rejected(tmp_path):
    path, _ = trunk_file(tmp_path, ModelConfig(backbone="resnet18"))
    with pytest.raises(ConfigError, match="model.pretrained.*missing keys"):
        check_pretrained(ModelConfig(backbone="small_cnn", pretrained=str(path)), 1, 8)
    with pytest.raises(ConfigError, match=r"conv1.weight is \[64, 1, 7, 7\] in the file, \[64, 3, 7, 7\]"):
        check_pretrained(ModelConfig(backbone="resnet18", pretrained=str(path)), 3, 8)


def test_freeze_trunk_trains_only_the_head(tmp_path):
    """A run from a local trunk with freeze_trunk: model.pt's trunk equals the file (BatchNorm
    statistics included), the head moved, and the stored embeddings changed over training."""
    layer = tiny_layer(epochs=2)
    path, _ = trunk_file(tmp_path, resolve(layer).model)
    cfg = resolve(layer, {"model": {"pretrained": str(path), "freeze_trunk": True}})
    result = run_one(cfg, tmp_path / "out", progress=False)
    assert result["status"] == "completed", result
    saved = torch.load(store.run_dir(tmp_path / "out", run_id(cfg)) / "model.pt", weights_only=True)["model"]
    given = torch.load(path, weights_only=True)
    for key, value in given.items():
        assert torch.equal(saved[f"trunk.{key}"], value), key
    data = store.read_run(result["path"], epochs=True)
    assert not np.allclose(data["epochs"][0]["test"], data["epochs"][2]["test"])  # the head learned
