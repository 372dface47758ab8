"""kvmworker: the per-host agent of the KVM platform."""

__version__ = "0.1.0"
