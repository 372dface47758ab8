"""What each handler answers: its commands, their flags and the pydantic models of their ``data``.

The convention, the same for every handler: ``api/<handler>.py`` holds the models of that handler's ``data``
and an API class (``NetworkApi``, ``VmApi``…) that declares each command with ``@command(Model, …)`` on an
abstract method whose docstring says what the command does. ``handlers/<handler>.py`` subclasses the API class and
implements each command, plus ``plan_<command>`` for each mutating one (``kvmworker.dispatch.commands``). Shared
pieces sit beside them: ``resources.py`` (the resource keys commands are serialised by) and ``domain.py`` (the
structured VM spec, which ``virt`` also builds domain XML from).

These modules import pydantic, ``kvmworker.protocol`` and ``kvmworker.dispatch.commands`` only, never libvirt,
pyroute2 or psutil: the HTTP bridge and ``kvmworker schema`` read every command from ``catalogue.py`` without
building a worker (``tests/spine/test_layers.py`` holds every module to its layer).
"""
