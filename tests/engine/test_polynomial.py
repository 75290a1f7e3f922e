"""polynomial: random irreducible polynomials over GF(2) for the chunker config."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from desktop_agent.engine.polynomial import DEGREE, is_irreducible, random_polynomial


def clmul(a: int, b: int) -> int:
    """Carry-less product: multiplication of polynomials over GF(2)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


def divides(d: int, f: int) -> bool:
    while f.bit_length() >= d.bit_length():
        f ^= d << (f.bit_length() - d.bit_length())
    return f == 0


def irreducible_by_trial_division(f: int) -> bool:
    deg = f.bit_length() - 1
    if deg < 1:
        return False
    return not any(divides(d, f) for d in range(2, 1 << (deg // 2 + 1)))


def test_random_polynomial_has_degree_53_and_is_irreducible() -> None:
    seen = set()
    for _ in range(5):
        f = random_polynomial()
        assert f.bit_length() - 1 == DEGREE == 53
        assert f & 1  # otherwise x divides it
        assert is_irreducible(f)
        seen.add(f)
    assert len(seen) == 5


def test_is_irreducible_agrees_with_trial_division_up_to_degree_10() -> None:
    for f in range(1, 1 << 11):
        assert is_irreducible(f) == irreducible_by_trial_division(f), bin(f)


def test_known_polynomials() -> None:
    assert is_irreducible(0b111)  # x^2 + x + 1
    assert not is_irreducible(0b101)  # (x + 1)^2
    assert is_irreducible(0x3DA3358B4DC173)  # restic's chunker test polynomial
    assert is_irreducible(0x310FD1A8BAB75F)  # from a config written by restic 0.14
    assert not is_irreducible(0x3DA3358B4DC173 ^ 1)  # no constant term: x divides it
    assert not is_irreducible(0) and not is_irreducible(1)


_deg26 = st.integers(1 << 26, (1 << 27) - 1)
_deg27 = st.integers(1 << 27, (1 << 28) - 1)


@settings(max_examples=100, deadline=None)
@given(_deg26, _deg27)
def test_products_are_reducible(a: int, b: int) -> None:
    f = clmul(a, b)
    assert f.bit_length() - 1 == 53
    assert not is_irreducible(f)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, (1 << 9) - 1), st.integers(2, (1 << 9) - 1))
def test_small_products_are_reducible(a: int, b: int) -> None:
    assert not is_irreducible(clmul(a, b))
