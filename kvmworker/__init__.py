"""kvmworker: the per-host agent of the KVM platform."""

from kvmworker.lazyimport import elementtree_on_demand, metadata_on_demand, yaml_on_demand

__version__ = "0.1.0"

# Before anything imports pydantic, kombu or ElementTree: what they would load at start that only some uses
# need is loaded by the first of those uses (kvmworker.lazyimport).
metadata_on_demand()
yaml_on_demand()
elementtree_on_demand()
