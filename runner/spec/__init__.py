"""Specs: jobs/*.yaml and --set overrides -> resolved RunConfigs (load, resolve, expand, manifest)."""

from runner.spec.expand import ExperimentSpec, dotted_to_nested, expand_grid, load_spec
from runner.spec.load import load_config, load_yaml, parse_set, split_spec
from runner.spec.manifest import read_manifest, write_manifest
from runner.spec.resolve import merge, merge_layer, resolve

__all__ = ["ExperimentSpec", "dotted_to_nested", "expand_grid", "load_config", "load_spec", "load_yaml", "merge",
           "merge_layer", "parse_set", "read_manifest", "resolve", "split_spec", "write_manifest"]
