"""Helpers every test suite shares: waiting for a condition, a free loopback port, kubectl against a test cluster.

Imported as `support` (pytest puts tests/ on the path through tests/conftest.py).
"""

from support.kube import Kubectl, crd_established
from support.waiting import free_port, wait_for

__all__ = ["Kubectl", "crd_established", "free_port", "wait_for"]
