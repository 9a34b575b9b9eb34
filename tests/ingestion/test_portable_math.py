"""Tests for the CPU-independent elementary functions (cxr/ingestion/portable_math.py)."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_features import dispatched_features, run_without_dispatch
from scipy import special

from cxr.ingestion import portable_math

_RNG = np.random.default_rng(0)
EXPONENTS = _RNG.uniform(-40.0, 40.0, 20_000)
POSITIVE = _RNG.uniform(1e-9, 50.0, 20_000)
ANGLES = _RNG.uniform(-80.0, 80.0, 20_000)
PLANE_X = _RNG.uniform(-3.0, 3.0, 20_000)
PLANE_Y = _RNG.uniform(-3.0, 3.0, 20_000)


def test_exp_and_expit_match_numpy_and_scipy_to_near_machine_precision() -> None:
    # Given arguments across the range the phantoms use (and far beyond)
    # When computed portably
    # Then they agree with NumPy / SciPy to about 1e-12
    np.testing.assert_allclose(portable_math.exp(EXPONENTS), np.exp(EXPONENTS), rtol=1e-12)
    np.testing.assert_allclose(portable_math.expit(EXPONENTS), special.expit(EXPONENTS), atol=1e-12)


def test_exp_saturates_instead_of_overflowing() -> None:
    # Given arguments far outside float64's range
    values = portable_math.exp(np.array([-1e6, 1e6]))

    # Then exp gives a tiny positive number and a huge finite one, and expit about 0 and 1
    assert 0.0 < values[0] < 1e-300 and np.isfinite(values[1]) and values[1] > 1e300
    np.testing.assert_allclose(portable_math.expit(np.array([-1e6, 1e6])), [0.0, 1.0], atol=1e-300)


def test_log_and_power_match_numpy() -> None:
    np.testing.assert_allclose(
        portable_math.log(POSITIVE), np.log(POSITIVE), rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(portable_math.power(POSITIVE, 1.5), POSITIVE**1.5, rtol=1e-12)
    np.testing.assert_allclose(portable_math.power(POSITIVE, 0.85), POSITIVE**0.85, rtol=1e-12)


def test_power_of_zero_is_zero() -> None:
    np.testing.assert_array_equal(portable_math.power(np.array([0.0, 1.0]), 1.15), [0.0, 1.0])


def test_sin_and_cos_match_numpy_over_many_turns() -> None:
    np.testing.assert_allclose(portable_math.sin(ANGLES), np.sin(ANGLES), atol=1e-13)
    np.testing.assert_allclose(portable_math.cos(ANGLES), np.cos(ANGLES), atol=1e-13)


def test_arctan2_matches_numpy_in_every_quadrant_and_on_the_axes() -> None:
    # Given points in all four quadrants, plus the axes and the origin
    axes_y = np.array([0.0, 0.0, 1.0, -1.0, 0.0, 2.0, -2.0])
    axes_x = np.array([0.0, -1.0, 0.0, 0.0, 1.0, 2.0, -2.0])
    y, x = np.concatenate([PLANE_Y, axes_y]), np.concatenate([PLANE_X, axes_x])

    # Then the angles agree with numpy.arctan2
    np.testing.assert_allclose(portable_math.arctan2(y, x), np.arctan2(y, x), atol=1e-14)


def test_hypot_matches_numpy() -> None:
    np.testing.assert_allclose(
        portable_math.hypot(PLANE_X, PLANE_Y), np.hypot(PLANE_X, PLANE_Y), rtol=1e-15
    )


_DIGEST_CODE = """
import hashlib
import numpy as np
from cxr.ingestion import portable_math as pm
rng = np.random.default_rng(0)
x = rng.uniform(-40.0, 40.0, 20_000)
positive = rng.uniform(1e-9, 50.0, 20_000)
digest = hashlib.sha256()
for values in (pm.exp(x), pm.expit(x), pm.log(positive), pm.power(positive, 1.5),
               pm.sin(x), pm.cos(x), pm.arctan2(x, positive - 25.0), pm.hypot(x, positive)):
    digest.update(values.tobytes())
print(digest.hexdigest())
"""


@pytest.mark.skipif(
    not dispatched_features(),
    reason="this CPU has no SIMD targets NumPy dispatches to, so there is no other path to compare",
)
def test_results_are_bit_identical_with_numpy_simd_dispatch_turned_off() -> None:
    # Given the functions evaluated here, with NumPy's AVX2/AVX-512 loops available
    namespace: dict[str, object] = {}
    exec(
        _DIGEST_CODE.replace("print(digest.hexdigest())", "result = digest.hexdigest()"), namespace
    )

    # When the same code runs where NumPy may only use its baseline loops (another CPU)
    elsewhere = run_without_dispatch(_DIGEST_CODE).strip()

    # Then every bit agrees
    assert namespace["result"] == elsewhere
