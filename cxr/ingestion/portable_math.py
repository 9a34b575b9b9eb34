"""Elementary functions that return the same bits on every CPU, for the phantoms.

NumPy picks its exp, log, sin, cos, power and arctan2 loops by CPU at run time (AVX-512,
AVX2 or baseline SIMD), and the loops round differently in the last bit. Passed through a
phantom's blur, gamma and 8-bit rounding, that last bit flips some pixels, so the same seed
gave other PNG bytes (and another `data/raw` hash in dvc.lock) on another machine. These
versions use only operations IEEE 754 rounds exactly on every CPU (+, -, *, /, sqrt, rint,
frexp, ldexp, comparisons), one NumPy call per operation so nothing is fused, in float64.
They are accurate to a few units in the last place, far below what 8-bit images resolve.
"""

from __future__ import annotations

import math

import numpy as np

# ln 2 and pi/2 split Cody-Waite style (fdlibm's constants): the high parts have trailing
# zero bits, so k * high is exact for the small integers k the reductions produce.
_LN2_HIGH = 6.93147180369123816490e-01
_LN2_LOW = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_PIO2_1 = 1.57079632673412561417e00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624871116645580e-21
_TWO_OVER_PI = 6.36619772367581382433e-01
_SQRT_HALF = 0.7071067811865476

# Taylor coefficients; Python rounds each quotient correctly, so they are the same everywhere.
# Eleven exp terms leave a relative error below 1e-12 for |r| <= ln2 / 2: 8-bit images need
# far less, and each term is a pass over a whole image.
_EXP_COEFFICIENTS = tuple(1.0 / math.factorial(n) for n in range(11))
_SIN_COEFFICIENTS = tuple((-1.0) ** n / math.factorial(2 * n + 1) for n in range(10))
_COS_COEFFICIENTS = tuple((-1.0) ** n / math.factorial(2 * n) for n in range(10))
_ATANH_COEFFICIENTS = tuple(1.0 / (2 * n + 1) for n in range(14))
_ATAN_COEFFICIENTS = tuple((-1.0) ** n / (2 * n + 1) for n in range(17))

# Beyond these exp over- or underflows float64; clipping keeps ldexp in range.
_EXP_LIMITS = (-708.0, 709.0)


def _polynomial(x: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """sum(coefficients[n] * x**n) by Horner's rule, one rounded operation at a time."""
    result = np.full_like(x, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        # In place: these loops run over whole images many times per phantom.
        np.multiply(result, x, out=result)
        np.add(result, coefficient, out=result)
    return result


def _as_float64(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def exp(x: np.ndarray | float) -> np.ndarray:
    """e**x, bit-identical on every CPU."""
    x = np.clip(_as_float64(x), *_EXP_LIMITS)
    # x = k ln2 + r with |r| <= ln2 / 2, so e**x = 2**k e**r and the series converges fast.
    k = np.rint(x * _INV_LN2)
    r = x - k * _LN2_HIGH
    r -= k * _LN2_LOW
    result = _polynomial(r, _EXP_COEFFICIENTS)
    # 2**k built from its bit pattern (exponent field k + 1023): exact, and faster than ldexp.
    # The limits keep k in [-1021, 1023], where 2**k and the product stay normal numbers.
    result *= ((k.astype(np.int64) + 1023) << 52).view(np.float64)
    return result


def expit(x: np.ndarray | float) -> np.ndarray:
    """The logistic function 1 / (1 + e**-x), bit-identical on every CPU."""
    return 1.0 / (1.0 + exp(-_as_float64(x)))


def log(x: np.ndarray | float) -> np.ndarray:
    """Natural logarithm of x > 0, bit-identical on every CPU."""
    mantissa, exponent = np.frexp(_as_float64(x))
    # Move the mantissa into [sqrt(1/2), sqrt(2)) so the atanh series below is short.
    small = mantissa < _SQRT_HALF
    mantissa = np.where(small, mantissa * 2.0, mantissa)
    exponent = (exponent - small).astype(np.float64)
    # log m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| <= 0.172.
    s = (mantissa - 1.0) / (mantissa + 1.0)
    log_mantissa = 2.0 * s * _polynomial(s * s, _ATANH_COEFFICIENTS)
    return exponent * _LN2_HIGH + (log_mantissa + exponent * _LN2_LOW)


def power(base: np.ndarray | float, exponent: float) -> np.ndarray:
    """base**exponent for base >= 0 (0 for base 0), bit-identical on every CPU."""
    base = _as_float64(base)
    positive = base > 0.0
    safe_base = np.where(positive, base, 1.0)
    return np.where(positive, exp(exponent * log(safe_base)), 0.0)


def _reduce_quarter_turns(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split x = k pi/2 + r with |r| <= pi/4; return (k mod 4, r). Exact enough for |x| < 1e5."""
    k = np.rint(x * _TWO_OVER_PI)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    return np.mod(k, 4.0).astype(np.int64), r


def _sin_cos(x: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    quarter, r = _reduce_quarter_turns(_as_float64(x))
    square = r * r
    sin_r = r * _polynomial(square, _SIN_COEFFICIENTS)
    cos_r = _polynomial(square, _COS_COEFFICIENTS)
    # sin(k pi/2 + r) and cos(k pi/2 + r) for k = 0, 1, 2, 3.
    sin = np.choose(quarter, (sin_r, cos_r, -sin_r, -cos_r))
    cos = np.choose(quarter, (cos_r, -sin_r, -cos_r, sin_r))
    return sin, cos


def sin(x: np.ndarray | float) -> np.ndarray:
    """Sine of x (radians, |x| < 1e5), bit-identical on every CPU."""
    return _sin_cos(x)[0]


def cos(x: np.ndarray | float) -> np.ndarray:
    """Cosine of x (radians, |x| < 1e5), bit-identical on every CPU."""
    return _sin_cos(x)[1]


def _arctan_unit(t: np.ndarray) -> np.ndarray:
    """arctan(t) for 0 <= t <= 1."""
    # atan(t) = 2 atan(t / (1 + sqrt(1 + t^2))): two halvings bring t below tan(pi/16) = 0.2.
    for _ in range(2):
        t = t / (1.0 + np.sqrt(1.0 + t * t))
    return 4.0 * (t * _polynomial(t * t, _ATAN_COEFFICIENTS))


def arctan2(y: np.ndarray | float, x: np.ndarray | float) -> np.ndarray:
    """The angle of (x, y) in [-pi, pi], like numpy.arctan2, bit-identical on every CPU."""
    y, x = _as_float64(y), _as_float64(x)
    abs_y, abs_x = np.abs(y), np.abs(x)
    steep = abs_y > abs_x
    larger = np.where(steep, abs_y, abs_x)
    ratio = np.where(
        larger > 0.0, np.where(steep, abs_x, abs_y) / np.where(larger > 0.0, larger, 1.0), 0.0
    )
    angle = _arctan_unit(ratio)
    angle = np.where(steep, np.pi / 2.0 - angle, angle)
    angle = np.where(x < 0.0, np.pi - angle, angle)
    return np.where(y < 0.0, -angle, angle)


def hypot(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """sqrt(x^2 + y^2) for the moderate values the phantoms use, bit-identical on every CPU."""
    x, y = _as_float64(x), _as_float64(y)
    return np.sqrt(x * x + y * y)
