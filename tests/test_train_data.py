"""Training data: data set loading, the reproducible sample order, integer preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinytrain.datasets import FASHION_MNIST_DIR
from tinytrain.errors import NotQuantizedError, UsageError
from tinytrain.frontends.load import load_model
from tinytrain.ir.dtypes import DType
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.train.data import (
    RESIZE_FRAC_BITS,
    Dataset,
    ResizeAxis,
    epoch_order,
    epoch_state,
    first_per_class,
    input_lut,
    iterate_batches,
    load_dataset,
    make_preprocess,
    preprocess_for_graph,
    resize_bilinear_u8,
    select_classes,
    xorshift32,
)

DATA = Path(__file__).resolve().parent.parent / "tinytrain" / "data"
SIZES = [(28, 28, 128, 128), (28, 28, 96, 96), (7, 9, 20, 13), (28, 28, 20, 17), (5, 5, 5, 5), (1, 3, 4, 8)]


def _input_tensor(shape: tuple[int, ...], scale: float, zero: int, dtype: DType = DType.INT8) -> Tensor:
    return Tensor("in", shape, dtype, TensorKind.INPUT, Quantization.per_tensor(scale, zero))


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize(("h", "w", "out_h", "out_w"), SIZES)
def test_resize_matches_tensorflow_bilinear(h: int, w: int, out_h: int, out_w: int) -> None:
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(h * 1000 + out_h)
    images = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    ours = resize_bilinear_u8(images, ResizeAxis.make(h, out_h), ResizeAxis.make(w, out_w))
    ref = tf.image.resize(images[..., None].astype(np.float32), [out_h, out_w], "bilinear").numpy()[..., 0]
    assert ours.dtype == np.uint8 and ours.shape == (3, out_h, out_w)
    assert np.abs(ours.astype(np.float64) - ref).max() <= 1.0


def test_resize_channels_independent_and_constant_preserved() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
    rows, cols = ResizeAxis.make(10, 33), ResizeAxis.make(12, 29)
    together = resize_bilinear_u8(rgb, rows, cols)
    for c in range(3):
        assert np.array_equal(together[..., c], resize_bilinear_u8(rgb[..., c], rows, cols))
    for value in (0, 1, 128, 254, 255):
        flat = np.full((1, 10, 12), value, np.uint8)
        assert np.all(resize_bilinear_u8(flat, rows, cols) == value)


@pytest.mark.parametrize(("n", "m"), [(28, 128), (128, 28), (3, 3), (1, 7), (9, 2)])
def test_resize_tables_are_integer_q11(n: int, m: int) -> None:
    axis = ResizeAxis.make(n, m)
    one = 1 << RESIZE_FRAC_BITS
    assert all(a.dtype == np.int32 for a in (axis.lo, axis.hi, axis.w0, axis.w1))
    assert np.all(axis.w0 + axis.w1 == one) and np.all(axis.w0 >= 0) and np.all(axis.w1 >= 0)
    assert np.all((axis.lo >= 0) & (axis.hi <= n - 1) & (axis.hi - axis.lo <= 1))


def test_resize_is_exactly_separable_integer_formula() -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (1, 6, 7), dtype=np.uint8)
    rows, cols = ResizeAxis.make(6, 11), ResizeAxis.make(7, 4)
    got = resize_bilinear_u8(img, rows, cols)
    p = img[0].astype(np.int64)
    for y in range(11):
        for x in range(4):
            acc = 0
            for r, wy in ((rows.lo[y], rows.w0[y]), (rows.hi[y], rows.w1[y])):
                for c, wx in ((cols.lo[x], cols.w0[x]), (cols.hi[x], cols.w1[x])):
                    acc += int(wy) * int(wx) * int(p[r, c])
            assert got[0, y, x] == (acc + (1 << 21)) >> 22


# ----------------------------------------------------------------------------- lookup table


@pytest.mark.parametrize(("scale", "zero"), [(1 / 127.5, 0), (2 / 255, -1), (0.0076859933, 0), (0.01, 5), (0.003, -20)])
def test_input_lut_definition(scale: float, zero: int) -> None:
    s = float(np.float32(scale))
    lut = input_lut(np.float32(scale), zero)  # type: ignore[arg-type]
    assert lut.dtype == np.int8 and lut.shape == (256,)
    v = (np.arange(256) / 127.5 - 1.0) / s
    expected = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zero, -128, 127)
    assert np.array_equal(lut.astype(np.int64), expected.astype(np.int64))
    assert np.all(np.diff(lut.astype(np.int64)) >= 0)


def test_input_lut_rejects_bad_scale() -> None:
    with pytest.raises(UsageError):
        input_lut(0.0, 0)
    with pytest.raises(UsageError):
        input_lut(float("nan"), 0)


# ----------------------------------------------------------------------------- preprocess


def test_preprocess_for_shipped_checkpoint_is_deterministic_and_close_to_float() -> None:
    tf = pytest.importorskip("tensorflow")
    graph = load_model(DATA / "mcunet-synthetic.pkl")
    t = graph.tensor(graph.inputs[0])
    prep = preprocess_for_graph(graph, (28, 28))
    images = np.random.default_rng(2).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    x = prep(images)
    assert x.dtype == np.int8 and x.shape == (4, *t.shape[1:])
    assert np.array_equal(x, prep(images.copy()))
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])
    s, z = t.qparams
    resized = tf.image.resize(images[..., None].astype(np.float32), t.shape[1:3], "bilinear").numpy()[..., 0]
    real = resized / 127.5 - 1.0
    # One uint8 step before the table is at most 1/127.5 in real units, plus half an LSB of rounding.
    assert np.abs((x[..., 0].astype(np.float64) - z) * s - real).max() <= 1 / 127.5 + s / 2 + 1e-9


def test_preprocess_three_channel_samples_keep_channels() -> None:
    prep = make_preprocess((8, 8, 3), _input_tensor((1, 16, 16, 3), 1 / 127.5, 0))
    rgb = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = prep(rgb)
    assert x.shape == (2, 16, 16, 3)
    assert np.array_equal(x, prep.lut[prep.resize(rgb)])


def test_preprocess_validation() -> None:
    with pytest.raises(UsageError, match="3-channel"):
        make_preprocess((8, 8, 3), _input_tensor((1, 16, 16, 1), 0.01, 0))
    with pytest.raises(UsageError, match="int8"):
        make_preprocess((8, 8), _input_tensor((1, 16, 16, 3), 0.01, 0, DType.UINT8))
    with pytest.raises(UsageError, match=r"\[1, H, W, C\]"):
        make_preprocess((8, 8), _input_tensor((1, 16, 3), 0.01, 0))
    with pytest.raises(NotQuantizedError):
        make_preprocess((8, 8), Tensor("in", (1, 4, 4, 3), DType.INT8, TensorKind.INPUT, None))
    prep = make_preprocess((8, 8), _input_tensor((1, 16, 16, 3), 0.01, 0))
    with pytest.raises(UsageError, match="uint8 samples"):
        prep(np.zeros((1, 9, 8), np.uint8))
    with pytest.raises(UsageError, match="uint8 samples"):
        prep(np.zeros((1, 8, 8), np.int16))


# ----------------------------------------------------------------------------- sample order


def test_xorshift32_published_value() -> None:
    # Marsaglia, "Xorshift RNGs" (2003): state 2463534242 -> 723471715.
    assert xorshift32(2463534242) == 723471715


def _reference_order(n: int, seed: int, epoch: int) -> list[int]:
    """The documented shuffle, written independently with numpy uint32/uint64 arithmetic."""
    h = np.uint32((seed + 0x9E3779B9 * (epoch + 1)) % 2**32)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    s = h if h != 0 else np.uint32(0x9E3779B9)
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        with np.errstate(over="ignore"):
            s ^= s << np.uint32(13)
            s ^= s >> np.uint32(17)
            s ^= s << np.uint32(5)
        j = int((np.uint64(s) * np.uint64(i + 1)) >> np.uint64(32))
        order[i], order[j] = order[j], order[i]
    return order


@pytest.mark.parametrize(("n", "seed", "epoch"), [(1, 0, 0), (10, 0, 0), (257, 3, 2), (1000, 2**32 + 5, 7)])
def test_epoch_order_matches_reference_and_is_permutation(n: int, seed: int, epoch: int) -> None:
    order = epoch_order(n, seed, epoch)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(n))
    assert order.tolist() == _reference_order(n, seed % 2**32, epoch)


def test_epoch_order_depends_on_seed_and_epoch() -> None:
    a = epoch_order(500, 1, 0)
    assert np.array_equal(a, epoch_order(500, 1, 0))
    assert not np.array_equal(a, epoch_order(500, 1, 1))
    assert not np.array_equal(a, epoch_order(500, 2, 0))
    assert all(epoch_state(seed, e) != 0 for seed in range(50) for e in range(5))
    with pytest.raises(UsageError):
        epoch_order(5, 0, -1)


def test_iterate_batches_covers_each_epoch_once() -> None:
    rng = np.random.default_rng(4)
    ds = Dataset("toy", rng.integers(0, 256, (10, 6, 6), dtype=np.uint8), np.arange(10, dtype=np.int64) % 3)
    prep = make_preprocess((6, 6), _input_tensor((1, 8, 8, 3), 2 / 255, -1))
    batches = list(iterate_batches(ds, prep, batch=4, seed=9, epochs=2))
    assert [len(b.indices) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert [b.step for b in batches] == list(range(6))
    for epoch in (0, 1):
        idx = np.concatenate([b.indices for b in batches if b.epoch == epoch])
        assert np.array_equal(idx, epoch_order(10, 9, epoch))
    b = batches[0]
    assert np.array_equal(b.x, prep(ds.images[b.indices])) and np.array_equal(b.y, ds.labels[b.indices])
    assert [len(b.indices) for b in iterate_batches(ds, prep, batch=4, seed=9, epochs=1, drop_last=True)] == [4, 4]
    with pytest.raises(UsageError):
        list(iterate_batches(ds, prep, batch=0, seed=0, epochs=1))


# ----------------------------------------------------------------------------- data sets


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_load_npz_gray_color_and_splits(tmp_path: Path) -> None:
    x = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    ds = load_dataset(_save(tmp_path / "g.npz", x=x, y=np.array([1, 0], np.uint8)), "train")
    assert ds.sample_shape == (4, 5) and ds.labels.dtype == np.int64 and ds.num_classes == 2
    assert np.array_equal(ds.images, x) and not ds.images.flags.writeable
    xc = np.zeros((3, 4, 4, 3), np.uint8)
    p = _save(tmp_path / "s.npz", x_train=xc, y_train=np.arange(3), x_test=xc[:1], y_test=np.array([2]))
    assert len(load_dataset(p, "train")) == 3 and len(load_dataset(p, "test")) == 1
    assert load_dataset(p, "test").sample_shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((2, 4, 4), np.uint8)}, "no array 'y'"),
        ({"x": np.zeros((2, 4, 4), np.float32), "y": np.zeros(2, np.int64)}, "uint8"),
        ({"x": np.zeros((2, 4), np.uint8), "y": np.zeros(2, np.int64)}, r"\[N, H, W\]"),
        ({"x": np.zeros((2, 4, 4, 2), np.uint8), "y": np.zeros(2, np.int64)}, "1 or 3 channels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, np.int64)}, "2 images but 3 labels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, ">= 0"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2, np.float32)}, "integer"),
        ({"x": np.zeros((0, 4, 4), np.uint8), "y": np.zeros(0, np.int64)}, "no images"),
    ],
)
def test_load_npz_validation(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        load_dataset(_save(tmp_path / "bad.npz", **arrays), "train")


def test_load_dataset_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        load_dataset(tmp_path / "missing.npz", "train")
    with pytest.raises(UsageError, match="unknown data set"):
        load_dataset("cifar-10", "train")
    with pytest.raises(UsageError, match="split"):
        load_dataset("fashion-mnist", "validation")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="cannot read"):
        load_dataset(tmp_path / "junk.npz", "train")


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_and_class_selection() -> None:
    ds = load_dataset("fashion-mnist", "test")
    assert len(ds) == 10000 and ds.sample_shape == (28, 28) and ds.num_classes == 10
    sub = select_classes(ds, [5, 9, 7])
    assert set(np.unique(sub.labels).tolist()) == {0, 1, 2}
    assert np.array_equal(sub.images[sub.labels == 1], ds.images[ds.labels == 9])
    kept = select_classes(ds, [3], relabel=False)
    assert np.all(kept.labels == 3)
    few = first_per_class(sub, 7)
    assert len(few) == 21 and np.array_equal(few.images[few.labels == 2], ds.images[ds.labels == 7][:7])
    with pytest.raises(UsageError):
        select_classes(ds, [1, 1])
