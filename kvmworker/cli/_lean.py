"""Imported first by the CLI, before anything imports pydantic, kombu or ElementTree: what they would load at
start that only some uses need is loaded by the first of those uses (``kvmworker.lazyimport``).

Only the CLI's processes (the worker, the bridge, the operator's commands) do this: a program that imports
kvmworker as a library (an orchestrator using ``kvmworker.client``) keeps its ``sys.modules`` as it is.
"""

from kvmworker.lazyimport import elementtree_on_demand, metadata_on_demand, yaml_on_demand

metadata_on_demand()
yaml_on_demand()
elementtree_on_demand()
