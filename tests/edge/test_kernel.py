"""edge/_kernel.c, the compiled per-patch work of the int8 decision path, against numpy.

The numpy path (EdgeNormaliser._quantised, the probe's copy and dot product) is the
reference the kernel must reproduce byte for byte; the stream-level checks against the core
Normaliser run both implementations (tests/edge/test_int8_path.py, `impl`). Here: the
kernel's own contract, its refusals, and the decoder's probe on it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from phosphene.edge.bundle import QuantParams
from phosphene.edge.kernel import KERNEL, kernel_name
from phosphene.edge.normaliser import EdgeNormaliser
from phosphene.signal import NormaliserConfig

PURE = os.environ.get("PHOSPHENE_PURE_PYTHON") == "1"
# The tests below exercise the kernel itself: they need it built (`make venv` builds it; an
# environment installed with PHOSPHENE_PURE_PYTHON=1 has none and fails them, by design).


def test_the_kernel_is_built_where_a_compiler_is():
    """`pip install -e .` (make venv) builds it; PHOSPHENE_PURE_PYTHON=1 installs without."""
    assert kernel_name() == ("numpy" if PURE else "c")


def _numpy_quantised(x, center, inv, quant: QuantParams, clip: float) -> np.ndarray:
    """The numpy path itself (EdgeNormaliser._quantised without the kernel)."""
    norm = EdgeNormaliser(x.shape[1], NormaliserConfig(clip=clip))
    norm.set_output_quant(quant)
    norm._kernel = None
    out = np.zeros(x.shape, np.int8)
    norm._quantised(x, np.empty_like(x), center, inv, out)
    return out, norm._qvec


@pytest.mark.parametrize("seed", range(40))
def test_quantise_gives_the_numpy_bytes(seed):
    """Random blocks, scales and zero points, both clip layouts (merged into the int8 range,
    or the normaliser's +-clip kept apart), +-inf, broadcast and per-row statistics."""
    rng = np.random.default_rng(seed)
    n, C = int(rng.integers(1, 65)), int(rng.choice([1, 3, 8, 96]))
    x = (rng.standard_normal((n, C)) * rng.choice([1.0, 30.0, 1e4])).astype(np.float32)
    x[rng.integers(n), rng.integers(C)] = np.inf
    x[rng.integers(n), rng.integers(C)] = -np.inf
    center = rng.standard_normal(C).astype(np.float32)
    inv = (1.0 / (rng.random(C) * 5 + 0.01)).astype(np.float32)
    # a coarse scale: the +-clip falls inside the int8 range and merges with it; a fine one
    # (seed odd): the int8 range is narrower than the clip's image and both clips apply
    scale = float(rng.uniform(0.05, 0.1) if seed % 2 == 0 else rng.uniform(0.001, 0.01))
    quant = QuantParams(scale=scale, zero_point=int(rng.integers(-40, 40)), dtype="int8",
                        shape=(1, n, C))
    want, qvec = _numpy_quantised(x, center, inv, quant, clip=float(rng.choice([4.0, 8.0])))
    for c, v in ((center, inv), (np.tile(center, (n, 1)), np.tile(inv, (n, 1)))):
        out = np.full((n, C), 99, np.int8)
        assert KERNEL.quantise(x, c, v, qvec, out) is True
        assert np.array_equal(out, want)


def test_quantise_rounds_half_to_even_and_clips_like_numpy():
    x = (np.arange(-600, 600, dtype=np.float32) * np.float32(0.25)).reshape(-1, 1)
    quant = QuantParams(scale=1.0, zero_point=0, dtype="int8", shape=(1, len(x), 1))
    want, qvec = _numpy_quantised(x, np.zeros(1, np.float32), np.ones(1, np.float32), quant, clip=1e6)
    out = np.zeros(x.shape, np.int8)
    assert KERNEL.quantise(x, np.zeros(1, np.float32), np.ones(1, np.float32), qvec, out)
    assert np.array_equal(out, want)
    assert out[x[:, 0] == 2.5][0, 0] == 2 and out[x[:, 0] == -3.5][0, 0] == -4  # ties to even
    assert out.min() == -128 and out.max() == 127


def test_quantise_declines_nan_and_refuses_what_it_cannot_read():
    x = np.ones((4, 3), np.float32)
    c, v = np.zeros(3, np.float32), np.ones(3, np.float32)
    q = np.array([0.1, 0, -128, 127, -8, 8, 0], np.float32)
    out = np.full((4, 3), 7, np.int8)
    x[2, 1] = np.nan
    assert KERNEL.quantise(x, c, v, q, out) is False
    assert (out == 7).all()  # nothing written
    assert KERNEL.has_nan(x) and not KERNEL.has_nan(np.full(5, np.inf, np.float32))
    x[2, 1] = 1.0
    with pytest.raises(TypeError):
        KERNEL.quantise(x.astype(np.float64), c, v, q, out)
    with pytest.raises(TypeError):
        KERNEL.quantise(x, c, v, q, out.astype(np.int16))
    with pytest.raises(ValueError):  # center neither one row nor all of x
        KERNEL.quantise(x, np.zeros(2, np.float32), np.ones(2, np.float32), q, out)
    with pytest.raises(ValueError):  # out a different size
        KERNEL.quantise(x, c, v, q, out[:3])
    with pytest.raises(ValueError):  # q not 7 values
        KERNEL.quantise(x, c, v, q[:6], out)
    with pytest.raises((ValueError, BufferError)):  # not C-contiguous
        KERNEL.quantise(np.ones((3, 4), np.float32).T, c, v, q, out)
    readonly = out.copy()
    readonly.flags.writeable = False
    with pytest.raises((ValueError, BufferError)):
        KERNEL.quantise(x, c, v, q, readonly)
    with pytest.raises(TypeError):
        KERNEL.quantise(x, c, v, q)


def test_dot_int8_is_the_dot_product_in_double():
    rng = np.random.default_rng(3)
    codes = rng.integers(-128, 128, 96).astype(np.int8)
    w = rng.standard_normal(96)
    assert KERNEL.dot_int8(codes, w) == pytest.approx(float(codes.astype(np.float64) @ w), rel=1e-13)
    assert KERNEL.dot_int8(codes.reshape(1, 96), w) == KERNEL.dot_int8(codes, w)
    with pytest.raises(ValueError):
        KERNEL.dot_int8(codes[:95], w)
    with pytest.raises(TypeError):
        KERNEL.dot_int8(codes.astype(np.float32), w)


def test_the_decoders_probe_on_the_kernel_equals_numpys(edge_bundle, edge_decoder):
    """P from the kernel's dot product and from numpy's copy + dot differ only in the order
    of 96 float64 additions."""
    rng = np.random.default_rng(11)
    W, C = edge_bundle.window_spec.window_samples, edge_bundle.n_channels
    enc = edge_decoder.encoder
    assert enc._dot_int8 is not None
    kernel_dot = enc._dot_int8
    try:
        for _ in range(20):
            rows = rng.integers(-128, 128, (1, W, C)).astype(np.int8)
            enc._dot_int8 = kernel_dot
            p_c = edge_decoder.decode_int8(rows)[0]
            enc._dot_int8 = None
            p_np = edge_decoder.decode_int8(rows)[0]
            assert abs(p_c - p_np) < 1e-12
    finally:
        enc._dot_int8 = kernel_dot


def _merge_case(rng, trial):
    """Known rows (sorted), values still to come in a ring, and the whole window."""
    C, n, m = int(rng.integers(1, 10)), int(rng.integers(2, 400)), int(rng.integers(0, 20))
    kind = trial % 4
    if kind == 0:
        data = rng.standard_normal((n + m, C))
    elif kind == 1:  # few values, long runs of ties (quantised wire values)
        data = np.rint(rng.normal(10, 1, (n + m, C))) * 0.02
    elif kind == 2:  # spans decades
        data = rng.lognormal(1.5, 2.0, (n + m, C))
    else:  # three values only: the median and the MAD among ties
        data = rng.integers(0, 3, (n + m, C))
    data = data.astype(np.float32)
    if trial % 5 == 0:  # the new values far from the old: the bands' guesses are off
        data[n:] += np.float32(rng.normal(0, 3))
    rows = np.ascontiguousarray(data[:n].T)
    rows.sort(axis=1)
    ring = rng.standard_normal((m + 7, C)).astype(np.float32)
    slots = rng.permutation(m + 7)[:m].astype(np.int64)
    ring[slots] = data[n:]
    width = int(rng.choice([1, 3, 8, 24, 1000]))  # where to read: never what comes out
    band, start = np.zeros((C, 3, width), np.float32), np.zeros((C, 4), np.int64)
    KERNEL.bands(rows, m, band, start)
    return data, rows, ring, slots, band, start


def test_merge_stats_gives_the_cores_median_mad_and_scale():
    """Against the core's own arithmetic (np.median, then inverse_scale) on the whole window."""
    from phosphene.signal import inverse_scale

    rng = np.random.default_rng(1)
    for trial in range(600):
        data, rows, ring, slots, band, start = _merge_case(rng, trial)
        C = data.shape[1]
        center, mad = np.full(C, -1, np.float32), np.full(C, -1, np.float32)
        assert KERNEL.merge_stats(rows, ring, slots, center, mad, band, start)
        want_center = np.median(data, axis=0)
        want_mad = np.median(np.abs(data - want_center), axis=0)
        assert np.array_equal(center, want_center) and np.array_equal(mad, want_mad), trial
        cfg = NormaliserConfig(floor_uv=float(rng.choice([0.01, 0.5])))
        inv = np.zeros(C, np.float32)
        assert KERNEL.merge_stats(rows, ring, slots, center, inv, band, start, cfg.floor_uv)
        assert np.array_equal(inv, inverse_scale(1.4826 * want_mad, want_center, cfg)), trial


def test_merge_stats_declines_non_finite_and_refuses_bad_input():
    rng = np.random.default_rng(2)
    slots = ()
    while len(slots) == 0:  # a case with values still to come
        _, rows, ring, slots, band, start = _merge_case(rng, 3)
    C = rows.shape[0]
    center, out = np.full(C, 5, np.float32), np.full(C, 5, np.float32)
    ring[slots[0], 0] = np.inf
    assert KERNEL.merge_stats(rows, ring, slots, center, out, band, start) is False
    assert (center == 5).all() and (out == 5).all()  # nothing written
    ring[slots[0], 0] = 1.0
    with pytest.raises(IndexError):
        KERNEL.merge_stats(rows, ring, np.array([len(ring)], np.int64), center, out, band, start)
    with pytest.raises(ValueError):  # center for another channel count
        KERNEL.merge_stats(rows, ring, slots, center[:-1] if C > 1 else np.zeros(2, np.float32),
                           out, band, start)
    with pytest.raises(TypeError):
        KERNEL.merge_stats(rows, ring, slots.astype(np.int32), center, out, band, start)
    with pytest.raises(TypeError):
        KERNEL.merge_stats(rows, ring, slots, center, out)


def test_boundary_blocks_of_any_layout_give_the_cores_bytes():
    """Blocks that cross or start on a refresh boundary take the kernel's short path; a block
    it cannot read (a gap's broadcast filler, a strided view) goes the general way. Bytes
    equal the core's either way."""
    from phosphene.edge.bundle import QuantParams as QP
    from phosphene.signal import Normaliser

    C, frame = 8, 16
    cfg = NormaliserConfig(window_s=0.8, refresh_s=0.2)
    rng = np.random.default_rng(4)
    x = rng.lognormal(1.5, 0.6, (4000, C)).astype(np.float32)
    quant = QP(scale=0.0508, zero_point=-31, dtype="int8", shape=(1, 128, C))
    want = quant.quantize(np.nan_to_num(Normaliser(C, cfg).process(x), nan=0.0))
    edge = EdgeNormaliser(C, cfg)
    edge.set_output_quant(quant)
    got = np.zeros((len(x), C), np.int8)
    wide = np.zeros((len(x), 2 * C), np.float32)
    wide[:, ::2] = x  # x as a strided view
    for k, i in enumerate(range(0, len(x), frame)):
        block = x[i:i + frame]
        if k % 5 == 1:  # the same values, not C-contiguous
            block = wide[i:i + frame, ::2]
        edge.process_int8(block, got[i:i + frame])
        edge.prepare()
        edge.wait_prepared()
    assert np.array_equal(got[cfg.warmup_samples:], want[cfg.warmup_samples:])
    assert edge.crossing_blocks > 5
    # a broadcast filler of the steady size across a boundary: the general way, same bytes
    edge2 = EdgeNormaliser(C, cfg)
    edge2.set_output_quant(quant)
    y = x.copy()
    got2 = np.zeros((len(y), C), np.int8)
    for i in range(0, len(y), frame):
        if (i // cfg.refresh_samples) != ((i + frame - 1) // cfg.refresh_samples) and i > 1000:
            y[i:i + frame] = y[i - 1]  # what a gap filler holds: the last sample, repeated
            block = np.broadcast_to(y[i - 1], (frame, C))
        else:
            block = y[i:i + frame]
        edge2.process_int8(block, got2[i:i + frame])
        edge2.prepare()
        edge2.wait_prepared()
    want2 = quant.quantize(np.nan_to_num(Normaliser(C, cfg).process(y), nan=0.0))
    assert np.array_equal(got2[cfg.warmup_samples:], want2[cfg.warmup_samples:])


def test_merge_hints_never_change_the_result_and_zeros_keep_numpys_sign():
    """The bands are read-location hints: correct copies at any starts (in range or not, bands
    wider than the row) give the same bits as no useful hint; a window of signed zeros gives
    numpy's +0.0 median, bit for bit."""
    rng = np.random.default_rng(6)
    for trial in range(400):
        n, m = int(rng.integers(2, 12)), int(rng.integers(0, 6))
        data = rng.choice(np.array([-0.0, 0.0, 1.0, -1.0, 2.5], np.float32), size=(n + m, 1))
        rows = np.sort(data[:n].T, axis=1)
        ring, slots = np.ascontiguousarray(data[n:]), np.arange(m, dtype=np.int64)
        want_c = np.median(data, axis=0)
        want_d = np.median(np.abs(data - want_c), axis=0)
        width = int(rng.integers(1, n + 6))
        band = np.zeros((1, 3, width), np.float32)
        start = np.zeros((1, 4), np.int64)
        for b in range(3):  # a hint: a true copy of the row from here (or a start nowhere near it)
            s0 = int(rng.integers(-5, n + 5)) if trial % 3 else int(rng.choice([-2**62, 2**62]))
            start[0, b] = s0
            for j in range(width):
                if 0 <= s0 + j < n:
                    band[0, b, j] = rows[0, s0 + j]
        start[0, 3] = int(rng.integers(-3, n + 3))  # the split's guess
        center, mad = np.zeros(1, np.float32), np.zeros(1, np.float32)
        assert KERNEL.merge_stats(rows, ring.reshape(-1, 1), slots, center, mad, band, start)
        assert center.view(np.uint32)[0] == want_c.astype(np.float32).view(np.uint32)[0], trial
        assert mad.view(np.uint32)[0] == want_d.astype(np.float32).view(np.uint32)[0], trial
    with pytest.raises(ValueError):  # more values to come than the kernel merges
        KERNEL.bands(rows, KERNEL.MERGE_MAX_RECENT + 1, np.zeros((1, 3, 4), np.float32),
                     np.zeros((1, 4), np.int64))


def test_quantise_with_non_finite_statistics_writes_numpys_zero():
    """After a refresh over a window with +-inf the core's statistics can be NaN: the kernel
    writes 0 there (numpy's cast gives 0 on this machine too), not an undefined conversion."""
    x = np.ones((2, 3), np.float32)
    center = np.array([np.nan, 0.0, np.inf], np.float32)
    inv = np.array([1.0, np.nan, 1.0], np.float32)
    quant = QuantParams(scale=0.05, zero_point=3, dtype="int8", shape=(1, 2, 3))
    with np.errstate(invalid="ignore"):
        want, qvec = _numpy_quantised(x, center, inv, quant, clip=8.0)
    out = np.full((2, 3), 9, np.int8)
    assert KERNEL.quantise(x, center, inv, qvec, out)
    assert np.array_equal(out, want) and (out[:, :2] == 0).all()
