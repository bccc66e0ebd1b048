"""Host-side grid arithmetic (``kernel_launch.cdiv`` / ``next_power_of_2``): the same numbers as Triton's helpers."""

from __future__ import annotations

import pytest

from sret.models.kernel_launch import cdiv, next_power_of_2

triton = pytest.importorskip("triton")


def test_cdiv_is_tritons():
    for a in range(0, 600, 7):
        for b in range(1, 80):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
    assert cdiv(200704, 64) == 3136 and cdiv(200705, 64) == 3137


def test_next_power_of_2_is_tritons():
    for n in list(range(1, 5000)) + [2**31 - 1, 2**31, 2**31 + 1, 2**40 + 3]:
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
    assert next_power_of_2(0) == triton.next_power_of_2(0)  # Triton's own answer where the plain one would differ
