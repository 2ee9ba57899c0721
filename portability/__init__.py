"""pytest-portability: one test suite, parameterized across hosts, containers, VMs and servers."""

__version__ = "0.1.0"
