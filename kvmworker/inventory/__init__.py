"""Host inventory: one reader per section (cpu, memory, storage, network, hardware, services, system).

Each reader takes the roots it reads (``/proc``, ``/sys``, ``/dev/kvm``, a namespace, a bus socket) through its
constructor, so tests can point it at a tree of their own. A reader's ``read()`` returns plain data and its
``summary()`` the headline figures; a field the machine does not expose is ``None``; a source the section cannot do
without raises that section's coded error (``section.failing_as``).
"""

from kvmworker.lazyimport import parts_only

parts_only("pyroute2")  # its netlink parts only (the network section), not the whole library: see lazyimport
