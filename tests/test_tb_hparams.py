"""TensorBoard HParams read like the grid: the keys it varies are the table's first columns."""

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from runner.spec import expand_grid, load_spec
from runner.launch.many import varying_keys
from runner.launch.tb_logger import TBLogger


def hparam_names(logdir) -> list[str]:
    """Names of the HParams experiment's columns, in the order TensorBoard shows them."""
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    return [h.name for h in data.experiment.hparam_infos]
    raise AssertionError(f"no HParams experiment under {logdir}")


def test_varying_keys_come_first(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ngrid:\n  loss.margin: [0.1, 0.2]\n  embedding.dim: [8, 16]\n  seed: [0, 1]\n")
    runs = expand_grid(load_spec(spec))
    keys = varying_keys(runs)
    assert {"loss.margin", "embedding.dim", "seed"} <= set(keys)  # (and miner.margin, which follows loss.margin)
    logger = TBLogger(tmp_path / "tb")
    logger.log_hparams(runs[0].to_dict(), {"map_at_r": 0.5}, run_name="hparams", first=tuple(keys))
    logger.close()
    names = hparam_names(tmp_path / "tb")
    assert names[:len(keys)] == keys and "data.augment" in names[len(keys):]
