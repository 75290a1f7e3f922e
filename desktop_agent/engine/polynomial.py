"""Random irreducible polynomials over GF(2) for the repository config.

We chunk with FastCDC, not restic's Rabin chunker, but a restic config must
still carry a valid ``chunker_polynomial`` (degree 53, irreducible): restic
refuses to open a repository whose polynomial fails its irreducibility test.
restic clients that write to our repository use it for their own chunking.
"""

from __future__ import annotations

import secrets

__all__ = ["random_polynomial", "is_irreducible", "DEGREE"]

DEGREE = 53


def _mulmod(a: int, b: int, mod: int, deg: int) -> int:
    result = 0
    top = 1 << deg
    while b:
        if b & 1:
            result ^= a
        b >>= 1
        a <<= 1
        if a & top:
            a ^= mod
    return result


def _mod(a: int, m: int) -> int:
    dm = m.bit_length()
    while a.bit_length() >= dm:
        a ^= m << (a.bit_length() - dm)
    return a


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, _mod(a, b)
    return a


def is_irreducible(f: int) -> bool:
    """Ben-Or's test: no factor of degree <= deg/2 divides ``f``."""
    deg = f.bit_length() - 1
    if deg < 1:
        return False
    x = 2  # the polynomial "x"
    power = x
    for _ in range(deg // 2):
        power = _mulmod(power, power, f, deg)  # x^(2^i) mod f
        if _gcd(f, power ^ x) != 1:
            return False
    return True


def random_polynomial() -> int:
    """A uniformly random irreducible polynomial of degree 53."""
    while True:
        f = secrets.randbits(DEGREE) | (1 << DEGREE) | 1
        if is_irreducible(f):
            return f
