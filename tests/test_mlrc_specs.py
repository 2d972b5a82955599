"""jobs/{cub,cars,sop,inshop}.yaml: each resolves to the MLRC recipe and passes runner.launch.validate
against a set generated in its own distributed layout, with a local ResNet-50 state dict."""

from pathlib import Path

import pytest
import torch

from runner.config import EmbeddingConfig, LossConfig, MinerConfig, ModelConfig, TrainConfig
from runner.data.augment import AugmentPolicy
from runner.data.image_set import ImageSet
from runner.dist import DistEnv
from runner.launch.validate import validate_runs
from runner.spec import expand_grid, load_spec
from runner.training.models import make_trunk
from runner.training.parts import build_parts
from runner.training.protocols import score
from tests.test_dml_sets import make_cars, make_cub, make_inshop, make_sop

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"cub": lambda tmp: make_cub(tmp), "cars": lambda tmp: make_cars(tmp) and tmp,
           "sop": lambda tmp: make_sop(tmp), "inshop": lambda tmp: make_inshop(tmp) and tmp}


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    trunk, _ = make_trunk(ModelConfig(backbone="resnet50"), 3, 224)
    torch.save(trunk.state_dict(), path)
    return path


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_spec_is_the_recipe_and_validates_on_its_layout(name, tmp_path, resnet50_weights):
    root = LAYOUTS[name](tmp_path)
    text = (ROOT / "jobs" / f"{name}.yaml").read_text()
    assert "A Metric Learning Reality Check" in text  # the protocol it follows is cited
    runs = expand_grid(load_spec(ROOT / "jobs" / f"{name}.yaml",
                                 [f"data.root={root}", f"model.pretrained={resnet50_weights}"]))
    assert len(runs) == 1
    cfg = runs[0]
    assert (cfg.data.name, cfg.data.split, cfg.data.storage, cfg.data.image_size) == (name, "official", "stream", 224)
    assert cfg.model.backbone == "resnet50" and cfg.model.freeze_bn and cfg.embedding.dim in (128, 512)
    assert cfg.train.batch_size // cfg.train.samples_per_class == 32 and cfg.train.samples_per_class == 4
    assert cfg.train.trunk_lr is not None and cfg.train.trunk_lr < cfg.train.lr
    assert cfg.eval.recall_at[:4] == (1, 2, 4, 8)
    assert validate_runs(runs) == []
    missing = expand_grid(load_spec(ROOT / "jobs" / f"{name}.yaml", [f"data.root={tmp_path / 'nowhere'}",
                                                                      f"model.pretrained={resnet50_weights}"]))
    problems = validate_runs(missing)
    assert len(problems) == 1 and problems[0][0].key == "data.root"


def test_trunk_lr_is_a_parameter_group_and_freeze_bn_keeps_batchnorm_fixed():
    train = ImageSet(torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(4).repeat(4),
                     list("abcd"), torch.arange(16))
    t = TrainConfig(batch_size=8, samples_per_class=2, lr=1e-3, trunk_lr=1e-5)
    parts = build_parts(ModelConfig(backbone="small_cnn", width=4, freeze_bn=True), EmbeddingConfig(dim=4),
                        LossConfig(), MinerConfig(), t, 0, train, AugmentPolicy(), DistEnv(), torch.device("cpu"))
    groups = parts.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [1e-5, 1e-3]
    trunk = {id(p) for p in parts.model.trunk.parameters()}
    assert all(id(p) in trunk for p in groups[0]["params"]) and not any(id(p) in trunk for p in groups[1]["params"])
    bn = [m for m in parts.model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(not p.requires_grad for m in bn for p in m.parameters())
    before = [m.running_mean.clone() for m in bn]
    parts.model.train()
    assert all(not m.training for m in bn) and parts.model.head.training
    parts.model(train.images[:8])
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn))  # statistics untouched by a batch


def test_clustering_off_drops_nmi_and_ami_and_keeps_the_retrieval_metrics():
    ds = ImageSet(torch.zeros(12, 1, 1, 1, dtype=torch.uint8), torch.arange(3).repeat(4), list("abc"), torch.arange(12))
    emb = torch.nn.functional.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    on, off = score(ds, emb, None, None, (1, 2)), score(ds, emb, None, None, (1, 2), clustering=False)
    assert "nmi" in on and "ami" in on and "nmi" not in off and "ami" not in off
    assert {k: v for k, v in on.items() if k not in ("nmi", "ami")} == off
