"""Comparison helpers shared by the op tests."""


def rel_err(a, b) -> float:
    """Relative RMS error of a against b (in float64)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def rel_errors(got: dict, want: dict) -> dict:
    """name -> rel_err(got[name], want[name]); the two dicts must have the same names."""
    assert got.keys() == want.keys()
    return {n: rel_err(got[n], want[n]) for n in want}
