"""runner.losses and runner.dbl_loss against the installed pytorch-metric-learning (no mocks)."""

import copy
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, regularizers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from runner import losses as rl
from runner.config import ConfigError, LossConfig, MinerConfig
from runner.spec import resolve
from runner.losses import DBLLoss

N_CLASSES, K, DIM = 4, 4, 8

# Every nn.Module class in PML's losses / miners modules is built and run, except these.
SKIPPED_LOSSES = {
    "BaseMetricLossFunction": "abstract",
    "GenericPairLoss": "abstract",
    "BaseLossWrapper": "wraps a loss object",
    "CrossBatchMemory": "wraps a loss object",
    "MultipleLosses": "wraps loss objects",
    "SelfSupervisedLoss": "wraps a loss object",
    "ManifoldLoss": "rejects labels",
    "VICRegLoss": "rejects labels",
}
SKIPPED_MINERS = {
    "BaseMiner": "abstract",
    "EmbeddingsAlreadyPackagedAsTriplets": "ignores labels",
}
# Arguments without a default that a config must give.
REQUIRED = {"RankedListLoss": dict(margin=0.4, params={"Tn": 1.0})}


def pml_classes(module):
    return sorted(n for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, torch.nn.Module))


def batch(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(N_CLASSES * K, DIM, generator=g, dtype=dtype)
    return emb, torch.arange(N_CLASSES).repeat_interleave(K)  # grouped by class, as SmoothAPLoss needs


def loss_cfg(name):
    return LossConfig(name=name, margin=REQUIRED.get(name, {}).get("margin"), params=REQUIRED.get(name, {}).get("params", {}))


def miner_cfg(name):
    return MinerConfig(name=name, margin=None, params={})


def build(name):
    return rl.build_loss(loss_cfg(name), num_classes=N_CLASSES, embedding_size=DIM)


def test_skip_lists_are_small_and_exact():
    assert SKIPPED_LOSSES.keys() == rl.UNSUPPORTED_LOSSES.keys() and len(SKIPPED_LOSSES) <= 8
    assert SKIPPED_MINERS.keys() == rl.UNSUPPORTED_MINERS.keys() and len(SKIPPED_MINERS) <= 2
    assert set(SKIPPED_LOSSES) <= set(pml_classes(losses)) and set(SKIPPED_MINERS) <= set(pml_classes(miners))
    for name in SKIPPED_LOSSES:
        with pytest.raises(ConfigError, match="loss.name"):
            rl.build_loss(LossConfig(name=name, margin=None))


def test_tables_cover_every_usable_class():
    usable = set(pml_classes(losses)) - set(SKIPPED_LOSSES) | {"DBLLoss"}
    assert set(rl.LOSS_INPUT) == usable
    assert set(rl.MINER_OUTPUT) == set(pml_classes(miners)) - set(SKIPPED_MINERS)


@pytest.mark.parametrize("name", sorted(set(pml_classes(losses)) - set(SKIPPED_LOSSES)) + ["DBLLoss"])
def test_every_loss_runs_forward_backward(name):
    torch.manual_seed(0)
    loss_fn = build(name)
    emb, labels = batch()
    emb.requires_grad_(True)
    loss = loss_fn(emb, labels)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("name", sorted(set(pml_classes(miners)) - set(SKIPPED_MINERS)))
def test_every_miner_feeds_a_loss(name):
    torch.manual_seed(0)
    miner = rl.build_miner(miner_cfg(name))
    emb, labels = batch()
    emb.requires_grad_(True)
    tuples = miner(emb, labels)
    assert len(tuples) == {"triplets": 3, "pairs": 4}[rl.MINER_OUTPUT[name]]
    for loss_name in ("TripletMarginLoss", "ContrastiveLoss"):
        rl.check_compatible(loss_cfg(loss_name), miner_cfg(name))
        loss = build(loss_name)(emb, labels, tuples)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_aliases():
    assert type(rl.build_loss(LossConfig(name="triplet"))) is losses.TripletMarginLoss
    assert type(rl.build_loss(LossConfig(name="contrastive"))) is losses.ContrastiveLoss
    assert type(rl.build_loss(LossConfig(name="dbl"))) is DBLLoss
    assert type(rl.build_loss(LossConfig(name="ms", margin=None))) is losses.MultiSimilarityLoss
    assert type(rl.build_loss(LossConfig(name="ntxent", margin=None))) is losses.NTXentLoss
    assert type(rl.build_miner(MinerConfig(name="pair", params={}))) is miners.PairMarginMiner
    assert rl.build_miner(MinerConfig(name=None)) is None and rl.build_miner(MinerConfig(name="none")) is None


def test_unknown_names_suggest_a_close_match():
    with pytest.raises(ConfigError, match=r"loss.name.*did you mean TripletMarginLoss\?"):
        rl.build_loss(LossConfig(name="TripletMarginLos"))
    with pytest.raises(ConfigError, match=r"did you mean ContrastiveLoss\?"):
        rl.build_loss(LossConfig(name="contrastiveloss"))
    with pytest.raises(ConfigError, match=r"miner.name.*did you mean TripletMarginMiner\?"):
        rl.build_miner(MinerConfig(name="TripletMiner"))
    with pytest.raises(ConfigError, match="miner.name"):
        rl.resolve_miner_margin(MinerConfig(name="NoSuchMiner"), LossConfig())
    with pytest.raises(ConfigError, match="loss.name"):  # config.resolve checks the loss name through it
        rl.resolve_miner_margin(MinerConfig(), LossConfig(name="TripletMarginLos"))


def test_margin_mapping():
    assert rl.build_loss(LossConfig(name="TripletMarginLoss", margin=0.3)).margin == 0.3
    contrastive = rl.build_loss(LossConfig(name="ContrastiveLoss", margin=0.7))
    assert (contrastive.neg_margin, contrastive.pos_margin) == (0.7, 0)
    assert rl.build_loss(LossConfig(name="ContrastiveLoss", margin=None)).neg_margin == 1  # PML default
    assert rl.build_miner(MinerConfig(name="TripletMarginMiner", margin=0.4, params={})).margin == 0.4
    with pytest.raises(ConfigError, match="loss.margin: got 0.2, expected null: MultiSimilarityLoss"):
        rl.build_loss(LossConfig(name="MultiSimilarityLoss", margin=0.2))
    with pytest.raises(ConfigError, match="miner.margin"):
        rl.build_miner(MinerConfig(name="PairMarginMiner", margin=0.2, params={}))
    with pytest.raises(ConfigError, match="loss.params.neg_margin.*set loss.margin"):
        rl.build_loss(LossConfig(name="ContrastiveLoss", params={"neg_margin": 0.5}))


def test_params_are_checked_and_objects_built():
    with pytest.raises(ConfigError, match=r"loss.params.smoth_loss.*smooth_loss, swap.*did you mean smooth_loss\?"):
        rl.build_loss(LossConfig(params={"smoth_loss": True}))
    with pytest.raises(ConfigError, match="loss.params.swap: got 1, expected true or false"):
        rl.build_loss(LossConfig(params={"swap": 1}))
    with pytest.raises(ConfigError, match="loss.params.num_classes"):
        rl.build_loss(LossConfig(name="ArcFaceLoss", margin=None, params={"num_classes": 3}), 3, DIM)
    with pytest.raises(ConfigError, match="loss.params.Tn: got None, expected a value"):
        rl.build_loss(LossConfig(name="RankedListLoss", margin=0.4))
    with pytest.raises(ConfigError, match=r"loss.params: .*CosineSimilarity"):  # PML's own assert
        rl.build_loss(LossConfig(name="ArcFaceLoss", margin=None, params={"distance": "LpDistance"}), 3, DIM)
    with pytest.raises(ConfigError, match=r"loss.params.distance.pwer.*did you mean power\?"):
        rl.build_loss(LossConfig(params={"distance": {"name": "LpDistance", "pwer": 2}}))
    with pytest.raises(ValueError, match="needs num_classes"):
        rl.build_loss(LossConfig(name="ProxyAnchorLoss", margin=None))
    loss_fn = rl.build_loss(LossConfig(name="ContrastiveLoss", params={
        "distance": "CosineSimilarity", "embedding_regularizer": {"name": "LpRegularizer", "p": 1}}))
    assert isinstance(loss_fn.distance, distances.CosineSimilarity)
    assert isinstance(loss_fn.embedding_regularizer, regularizers.LpRegularizer) and loss_fn.embedding_regularizer.p == 1
    miner = rl.build_miner(MinerConfig(params={"type_of_triplets": "hard", "distance": "CosineSimilarity"}))
    assert miner.type_of_triplets == "hard" and isinstance(miner.distance, distances.CosineSimilarity)


def test_resolve_miner_margin():
    loss = LossConfig(name="TripletMarginLoss", margin=0.3)
    assert rl.resolve_miner_margin(MinerConfig(name="TripletMarginMiner", margin=None), loss) == 0.3
    assert rl.resolve_miner_margin(MinerConfig(name="TripletMarginMiner", margin=0.1), loss) == 0.1
    assert rl.resolve_miner_margin(MinerConfig(name="TripletMarginMiner"), LossConfig(margin=None)) is None
    assert rl.resolve_miner_margin(MinerConfig(name="PairMarginMiner", margin=None), loss) is None
    assert rl.resolve_miner_margin(MinerConfig(name=None), loss) is None
    with pytest.raises(ConfigError, match="miner.margin"):
        rl.resolve_miner_margin(MinerConfig(name="MultiSimilarityMiner", margin=0.1), loss)
    assert resolve({"loss": {"margin": 0.25}}).miner.margin == 0.25  # wired into config.resolve


@pytest.mark.parametrize("loss_name, miner_name, ok", [
    ("TripletMarginLoss", "TripletMarginMiner", True),
    ("TripletMarginLoss", "PairMarginMiner", True),  # convert_to_triplets joins pairs on the anchor
    ("ContrastiveLoss", "TripletMarginMiner", True),  # convert_to_pairs splits triplets
    ("MultiSimilarityLoss", "MultiSimilarityMiner", True),
    ("DBLLoss", "BatchHardMiner", True),
    ("ArcFaceLoss", "TripletMarginMiner", False),
    ("ProxyAnchorLoss", "PairMarginMiner", False),
    ("NormalizedSoftmaxLoss", "MultiSimilarityMiner", False),
    ("RankedListLoss", "TripletMarginMiner", False),
    ("ArcFaceLoss", None, True),
])
def test_compatibility(loss_name, miner_name, ok):
    if ok:
        rl.check_compatible(loss_cfg(loss_name), miner_cfg(miner_name))
    else:
        with pytest.raises(ConfigError, match="miner.name.*expected null"):
            rl.check_compatible(loss_cfg(loss_name), miner_cfg(miner_name))


@pytest.mark.parametrize("loss, miner, key", [
    (LossConfig(name="TripletMarginLos"), miner_cfg(None), "loss.name"),
    (LossConfig(name="ms"), miner_cfg(None), "loss.margin"),  # MultiSimilarityLoss has no margin
    (LossConfig(params={"smoth_loss": True}), miner_cfg(None), "loss.params.smoth_loss"),
    (LossConfig(name="RankedListLoss", margin=0.4), miner_cfg(None), "loss.params.Tn"),
    (LossConfig(), MinerConfig(name="PairMarginMiner"), "miner.params.type_of_triplets"),
    (LossConfig(), MinerConfig(name="PairMarginMiner", margin=0.1, params={}), "miner.margin"),
])
def test_check_compatible_validates_like_the_builders(loss, miner, key):
    with pytest.raises(ConfigError) as err:
        rl.check_compatible(loss, miner)
    assert err.value.key == key


def test_losses_marked_none_really_reject_tuples():
    emb, labels = batch()
    tuples = lmu.get_all_pairs_indices(labels)
    for name, kind in rl.LOSS_INPUT.items():
        if kind == "none":
            with pytest.raises(ValueError, match="indices_tuple is not supported"):
                build(name)(emb, labels, tuples)


def test_loss_shape_helpers():
    assert rl.requires_triplets("triplet") and not rl.requires_triplets("ContrastiveLoss")
    assert rl.needs_positive_pairs("dbl") and not rl.needs_positive_pairs("ArcFaceLoss")


# ---------------------------------------------------------------- DBLLoss

def dbl_numpy(d_pos, d_neg, m):
    p = lambda d: (1 + np.exp(-m)) / (1 + np.exp(np.asarray(d) - m))  # noqa: E731
    return np.mean(-np.log(p(d_pos))) + np.mean(-np.log(1 - p(d_neg)))


def test_dbl_matches_hand_computation():
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    raw = distances.LpDistance(normalize_embeddings=False)
    for m in (0.5, 1.0, 2.0):
        loss = DBLLoss(margin=m, distance=raw)(emb, labels)
        # all pairs, both orders: positives (0,1) at 5; negatives (0,2) at 1 and (1,2) at sqrt(20)
        assert loss.item() == pytest.approx(dbl_numpy([5, 5], [1, math.sqrt(20)] * 2, m), rel=1e-12)
        tri = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))  # -> pairs (0,1) and (0,2)
        assert DBLLoss(margin=m, distance=raw)(emb, labels, tri).item() == pytest.approx(dbl_numpy([5], [1], m), rel=1e-12)
    assert build("dbl").margin == 1.0


def test_dbl_prefers_close_positives_and_is_stable():
    raw = distances.LpDistance(normalize_embeddings=False)
    labels = torch.tensor([0, 0, 1])
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))  # negative fixed
    values = [DBLLoss(distance=raw)(torch.tensor([[0.0, 0], [x, 0], [0, 5]]), labels, pairs).item()
              for x in (3.0, 2.0, 1.0, 0.0)]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
    far = torch.tensor([[0.0, 0], [1e4, 0], [0, 1e4]], requires_grad=True)
    loss = DBLLoss(distance=raw)(far, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(far.grad).all()
    # D = 0 for a positive and a negative pair: finite loss and gradients
    same = torch.zeros(4, 3)
    same[:, 0] = 1
    same.requires_grad_(True)
    loss = DBLLoss()(same, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()


def test_dbl_gradcheck():
    emb, labels = batch(seed=1, dtype=torch.float64)
    emb = emb[:6, :3].clone().requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: DBLLoss(margin=0.7)(e, labels), (emb,))


# ---------------------------------------------------------------- loss_with_stats

@pytest.mark.parametrize("cfg, miner", [
    (LossConfig(), None),
    (LossConfig(), MinerConfig(name="TripletMarginMiner", margin=0.5, params={})),
    (LossConfig(name="ContrastiveLoss", margin=None), MinerConfig(name="PairMarginMiner", params={})),
    (LossConfig(name="MultiSimilarityLoss", margin=None), None),
    (LossConfig(name="MarginLoss", margin=None), None),
    (LossConfig(name="NTXentLoss", margin=None), None),
    (LossConfig(name="DBLLoss", margin=1.0), MinerConfig(name="BatchHardMiner", params={})),
    (LossConfig(name="ArcFaceLoss", margin=None), None),
    (LossConfig(name="ProxyAnchorLoss", margin=None, params={"weight_regularizer": "RegularFaceRegularizer"}), None),
    (LossConfig(params={"embedding_regularizer": "LpRegularizer"}), None),
])
def test_loss_with_stats_equals_plain_loss(cfg, miner):
    torch.manual_seed(0)
    loss_fn = rl.build_loss(cfg, num_classes=N_CLASSES, embedding_size=DIM)
    emb, labels = batch()
    tuples = rl.build_miner(miner)(emb, labels) if miner else None
    plain = copy.deepcopy(loss_fn)(emb, labels, tuples)
    loss, active = rl.loss_with_stats(loss_fn, emb, labels, tuples)
    assert torch.equal(loss, plain)
    assert isinstance(active, torch.Tensor) and active.ndim == 0
    assert math.isnan(active) or 0 <= active <= 1


def test_active_fraction_counts_triplets_with_loss():
    emb, labels = batch(seed=3)
    loss_fn = rl.build_loss(LossConfig(margin=0.1))
    a, p, n = rl.build_miner(MinerConfig(margin=0.4, params={"type_of_triplets": "all"}))(emb, labels)
    x = torch.nn.functional.normalize(emb).numpy().astype(np.float64)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    violation = d[a, p] - d[a, n] + 0.1
    same = labels.numpy()[:, None] == labels.numpy()[None, :]
    all_triplets = ((same.sum(1) - 1) * (~same).sum(1)).sum()  # every candidate, mined or not
    expected = np.sum(violation > 0) / all_triplets
    assert 0 < expected < 1  # a mix of active and satisfied triplets
    _, active = rl.loss_with_stats(loss_fn, emb, labels, (a, p, n))
    assert active.item() == pytest.approx(expected)


def test_loss_with_stats_falls_back_for_other_modules():
    emb, labels = batch()
    wrapped = losses.MultipleLosses([losses.TripletMarginLoss()])
    loss, active = rl.loss_with_stats(wrapped, emb, labels)
    assert torch.equal(loss, wrapped(emb, labels)) and torch.isnan(active)


def _ddp_worker(rank: int, world_size: int, init_file: str) -> None:
    from pytorch_metric_learning.utils import distributed as pml_dist
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        emb, labels = batch(seed=rank)
        loss_fn = pml_dist.DistributedLossWrapper(rl.build_loss(LossConfig(margin=0.1)))
        miner = pml_dist.DistributedMinerWrapper(rl.build_miner(MinerConfig(margin=0.4, params={})))
        tuples = miner(emb, labels)
        loss, active = rl.loss_with_stats(loss_fn, emb, labels, tuples)
        assert torch.equal(loss, loss_fn(emb, labels, tuples))
        assert 0 < active.item() <= 1
    finally:
        torch.distributed.destroy_process_group()


def test_loss_with_stats_inside_distributed_wrapper(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init")), nprocs=2)
