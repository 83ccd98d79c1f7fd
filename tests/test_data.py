"""Tests for udm.data: the Dataset checks, toys, digits, IDX/MNIST, image folders and numpy files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import udm.data as data
from udm.data import DATASETS, TOYS, Dataset, from_uint8, load_dataset, read_idx, to_uint8

# ----------------------------------------------------------------------------- Dataset


def _points(n: int = 10, labels: bool = True) -> Dataset:
    x = torch.arange(2 * n, dtype=torch.float32).reshape(n, 2)
    y = torch.arange(n) % 3 if labels else None
    return Dataset(x, y, 3 if labels else None, "points", "pts")


def test_dataset_basics() -> None:
    d = _points(10)
    assert len(d) == 10 and d.shape == (2,) and d.y.dtype == torch.int64
    assert "pts" in repr(d) and "n=10" in repr(d)
    sub = d.subset([1, 3])
    assert torch.equal(sub.x, d.x[[1, 3]]) and torch.equal(sub.y, d.y[[1, 3]])
    assert torch.equal(d.subset(torch.arange(10) < 2).x, d.x[:2])
    assert len(d.subset(slice(0, 4))) == 4


def test_dataset_rejects_non_finite_with_count_and_first_index() -> None:
    x = torch.zeros(6, 2)
    x[3, 1] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"'broken'.* 2 non-finite.*sample 3"):
        Dataset(x, None, None, "points", "broken")


@pytest.mark.parametrize(
    ("x", "y", "classes", "kind", "match"),
    [
        (torch.zeros(4, 2, dtype=torch.int64), None, None, "points", "floating"),
        (torch.zeros(0, 2), None, None, "points", "empty"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), 2, "points", r"shape \(4,\)"),
        (torch.zeros(4, 2), torch.tensor([0, 1, 2, 5]), 3, "points", r"outside \[0, 3\).*y\[3\] = 5"),
        (torch.zeros(4, 2), torch.tensor([0, -1, 0, 0]), 3, "points", r"outside"),
        (torch.zeros(4, 2), torch.zeros(4), 2, "points", "integer"),
        (torch.zeros(4, 8, 8), None, None, "image", r"\(N, C, H, W\)"),
        (torch.zeros(4, 2), None, None, "vectors", "kind"),
    ],
)
def test_dataset_validation(x: torch.Tensor, y: torch.Tensor | None, classes: int | None, kind: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Dataset(x, y, classes, kind, "bad")


def test_labels_without_num_classes_infer_it() -> None:
    assert Dataset(torch.zeros(3, 2), torch.tensor([0, 4, 1]), None, "points", "p").num_classes == 5


def test_split_is_disjoint_complete_and_deterministic() -> None:
    d = _points(100)
    train, test = d.split(0.2, seed=3)
    assert (len(train), len(test)) == (80, 20)
    a, b = train.x[:, 0].tolist(), test.x[:, 0].tolist()
    assert not set(a) & set(b) and sorted(a + b) == d.x[:, 0].tolist()
    again_train, again_test = d.split(0.2, seed=3)
    assert torch.equal(again_train.x, train.x) and torch.equal(again_test.y, test.y)
    assert not torch.equal(d.split(0.2, seed=4)[1].x, test.x)
    assert test.name == "pts/test"
    with pytest.raises(ValueError, match="test_fraction"):
        d.split(1.0)


def test_uint8_round_trip() -> None:
    u = torch.arange(256, dtype=torch.uint8)
    x = from_uint8(u)
    assert x[0] == -1.0 and x[-1] == 1.0 and x.dtype == torch.float32
    assert torch.equal(to_uint8(x), u)
    assert to_uint8(torch.tensor([-3.0, 3.0, float("nan")])).tolist() == [0, 255, 0]


def test_unknown_dataset_and_option() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'moons'.*two_moons"):
        load_dataset("moons")
    with pytest.raises(ValueError, match=r"unknown option 'sed'.*allowed options: n, seed, noise"):
        load_dataset("two_moons", sed=1)
    assert {"two_moons", "digits", "mnist", "image_folder", "array"} <= set(DATASETS.names())


# ----------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", TOYS)
def test_toys_deterministic_per_seed_and_unit_scale(name: str) -> None:
    a = load_dataset(name, n=20000, seed=0)
    b = load_dataset(name, n=20000, seed=0)
    c = load_dataset(name, n=20000, seed=1)
    assert a.kind == "points" and a.x.shape == (20000, 2) and a.x.dtype == torch.float32
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    # the fixed scaling gives mean ~0 and std ~1 per coordinate (standard error of either is < 0.01)
    assert a.x.mean(0).abs().max() < 0.05
    assert ((a.x.std(0) - 1.0).abs() < 0.06).all(), a.x.std(0)


def test_toys_do_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_dataset("checkerboard", n=50)
    assert torch.equal(torch.rand(3), expected)


def test_toy_labels() -> None:
    moons = load_dataset("two_moons", n=4000)
    assert moons.num_classes == 2 and set(moons.y.tolist()) == {0, 1}
    eight = load_dataset("eight_gaussians", n=4000, noise=0.01)
    assert eight.num_classes == 8 and set(eight.y.tolist()) == set(range(8))
    angle = torch.atan2(eight.x[:, 1], eight.x[:, 0]) % (2 * torch.pi)
    assert torch.equal(torch.round(angle / (torch.pi / 4)).long() % 8, eight.y)


def test_checkerboard_occupies_only_black_cells() -> None:
    x = load_dataset("checkerboard", n=5000).x * (2 / 3**0.5)  # back to native [-2, 2] units
    cells = torch.floor(x + 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


# ----------------------------------------------------------------------------- digits


def test_digits() -> None:
    d = load_dataset("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.kind == "image" and d.num_classes == 10
    assert d.x.min() == -1.0 and d.x.max() == 1.0
    assert set(d.y.tolist()) == set(range(10))


# ----------------------------------------------------------------------------- IDX / MNIST


def _idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_mnist(directory: Path, n: int, gz: bool, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for name, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        raw = _idx_bytes(arr)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reader_on_synthetic_files(tmp_path: Path, gz: bool) -> None:
    images, labels = _write_mnist(tmp_path, 7, gz)
    d = load_dataset("mnist", path=tmp_path)
    assert d.x.shape == (7, 1, 28, 28) and d.num_classes == 10
    assert torch.equal(to_uint8(d.x[:, 0]), torch.from_numpy(images))
    assert d.y.tolist() == labels.tolist()
    assert len(load_dataset("mnist", path=tmp_path, limit=3)) == 3


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr))
    out = read_idx(tmp_path / "a.idx")
    assert out.shape == (2, 3, 4) and out.dtype == np.int32 and (out == np.arange(24).reshape(2, 3, 4)).all()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_file_names_the_file(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, 5, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    raw = bad.read_bytes()[:-100]
    if gz:
        bad.unlink()
        bad = tmp_path / "train-images-idx3-ubyte.gz"
        raw = gzip.compress(raw)
    bad.write_bytes(raw)
    with pytest.raises(ValueError, match=rf"{bad.name} is truncated"):
        load_dataset("mnist", path=tmp_path)


def test_idx_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, 5, gz=True)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-12])
    with pytest.raises(ValueError, match=rf"{bad.name}.*gzip"):
        load_dataset("mnist", path=tmp_path)


def test_idx_bad_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path, 5, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(ValueError, match=rf"{bad.name}: bad IDX magic number 0x1234"):
        load_dataset("mnist", path=tmp_path)
    # a valid IDX file of the wrong kind (labels where images belong) is also refused
    _write_mnist(tmp_path, 5, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(ValueError, match="magic 0x00000803"):
        load_dataset("mnist", path=tmp_path)


def test_mnist_missing_files_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.default_data_dir() == tmp_path and data.find_mnist() is None
    with pytest.raises(FileNotFoundError, match=rf"looked in: {tmp_path / 'mnist'}.*path=.*UDM_DATA"):
        load_dataset("mnist")
    _write_mnist(tmp_path / "mnist", 4, gz=True, split="test")
    assert len(load_dataset("mnist", split="test")) == 4
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", split="valid")


def test_real_mnist_files() -> None:
    if data.find_mnist(split="train") is None or data.find_mnist(split="test") is None:
        pytest.skip(f"MNIST files not found in {data.mnist_search_dirs()}; set UDM_DATA to run this test")
    test = load_dataset("mnist", split="test")
    assert test.x.shape == (10000, 1, 28, 28) and test.y.tolist()[:3] == [7, 2, 1]
    train = load_dataset("mnist", split="train")
    assert len(train) == 60000 and int(train.y[0]) == 5
    assert train.x.min() == -1.0 and train.x.max() == 1.0
    assert torch.bincount(train.y, minlength=10).min() > 5000


# ----------------------------------------------------------------------------- image folders


def _save(path: Path, value: int, size: tuple[int, int] = (6, 4), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value, value)
    Image.new(mode, size, color).save(path)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    _save(tmp_path / "dog" / "a.png", 255)
    _save(tmp_path / "cat" / "b.PNG", 0)
    _save(tmp_path / "cat" / "nested" / "c.jpg", 0)
    (tmp_path / "notes.txt").write_text("not an image")
    d = load_dataset("image_folder", path=tmp_path)
    assert d.x.shape == (3, 3, 4, 6) and d.num_classes == 2
    assert d.y.tolist() == [0, 0, 1]  # files sorted: cat/b.PNG, cat/nested/c.jpg, dog/a.png; cat < dog
    assert (d.x[0] == -1.0).all() and (d.x[2] == 1.0).all()
    gray = load_dataset("image_folder", path=tmp_path, size=3, channels=1)
    assert gray.x.shape == (3, 1, 3, 3) and torch.allclose(gray.x[2], torch.ones(1, 3, 3))


def test_image_folder_flat_gray_has_no_labels(tmp_path: Path) -> None:
    _save(tmp_path / "x.png", 128, mode="L")
    _save(tmp_path / "y.png", 64, mode="L")
    d = load_dataset("image_folder", path=tmp_path)
    assert d.y is None and d.x.shape == (2, 1, 4, 6)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.png/\.jpg/\.jpeg files found under .*empty"):
        load_dataset("image_folder", path=tmp_path / "empty")
    _save(tmp_path / "mixed" / "a.png", 10, size=(4, 4))
    _save(tmp_path / "mixed" / "b.png", 10, size=(5, 4))
    with pytest.raises(ValueError, match="different sizes.*size="):
        load_dataset("image_folder", path=tmp_path / "mixed")
    assert load_dataset("image_folder", path=tmp_path / "mixed", size=2).x.shape == (2, 3, 2, 2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset("image_folder", path=tmp_path / "bad")


# ----------------------------------------------------------------------------- numpy files


def test_npy_points_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "pts.npy", x)
    d = load_dataset("array", path=tmp_path / "pts.npy")
    assert d.kind == "points" and d.name == "pts" and d.y is None
    assert np.allclose(d.x.numpy(), x, atol=1e-6)


def test_npz_images_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 5, 5, 3), dtype=np.uint8)  # channels last
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "imgs.npz", images=images, labels=labels)
    d = load_dataset("array", path=tmp_path / "imgs.npz")
    assert d.kind == "image" and d.x.shape == (6, 3, 5, 5) and d.num_classes == 3
    assert torch.equal(to_uint8(d.x), torch.from_numpy(images).permute(0, 3, 1, 2))
    assert d.y.tolist() == labels.tolist()
    gray = rng.integers(0, 256, size=(4, 7, 7), dtype=np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    assert load_dataset("array", path=tmp_path / "gray.npy").x.shape == (4, 1, 7, 7)
    assert load_dataset("array", path=tmp_path / "gray.npy", kind="points").x.shape == (4, 7, 7)


def test_array_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"pass key=NAME"):
        load_dataset("array", path=tmp_path / "two.npz")
    assert len(load_dataset("array", path=tmp_path / "two.npz", key="b")) == 3
    with pytest.raises(ValueError, match=r"no array 'c'"):
        load_dataset("array", path=tmp_path / "two.npz", key="c")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        load_dataset("array", path=tmp_path / "obj.npy")
    nan = np.zeros((5, 2))
    nan[4, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match=r"'nan' has 1 non-finite.*sample 4"):
        load_dataset("array", path=tmp_path / "nan.npy")
    np.save(tmp_path / "loud.npy", np.full((2, 1, 3, 3), 7.0))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        load_dataset("array", path=tmp_path / "loud.npy")


# ----------------------------------------------------------------------------- tokens


def _tokens(n: int = 10, length: int = 4, **fields: object) -> Dataset:
    x = torch.arange(n * length).reshape(n, length) % 3
    return Dataset(x, torch.arange(n) % 2, 2, "tokens", "tok", **fields)


@pytest.mark.parametrize(
    ("x", "fields", "match"),
    [
        (torch.zeros(3, 4), {"vocab_size": 2}, r"integer tensor, got torch.float32"),
        (torch.zeros(3, 4, dtype=torch.bool), {"vocab_size": 2}, "integer tensor"),
        (torch.zeros(3, 2, 2, dtype=torch.int64), {"vocab_size": 2}, r"\(N, L\)"),
        (torch.zeros(0, 4, dtype=torch.int64), {"vocab_size": 2}, "empty"),
        (torch.tensor([[0, 1], [1, 0], [0, 2]]), {"vocab_size": 2}, r"1 token id\(s\) outside \[0, 2\).*x\[2, 1\] = 2"),
        (torch.tensor([[0, -1], [1, 0]]), {"vocab_size": 2}, r"x\[0, 1\] = -1"),
        (torch.zeros(2, 4, dtype=torch.int64), {"vocab_size": 3, "vocab": ["a", "b"]}, "vocab has 2 entries but vocab_size is 3"),
        (torch.zeros(2, 4, dtype=torch.int64), {"vocab_size": 2, "image_shape": (1, 3, 3)}, r"holds 9 tokens.*L = 4"),
        (torch.zeros(2, 4, dtype=torch.int64), {"vocab_size": 0}, "vocab_size must be"),
    ],
)
def test_tokens_validation(x: torch.Tensor, fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Dataset(x, None, None, "tokens", "bad", **fields)


def test_tokens_fields_apply_only_to_tokens_and_defaults() -> None:
    with pytest.raises(ValueError, match="vocab_size only applies to kind 'tokens'"):
        Dataset(torch.zeros(2, 2), None, None, "points", "p", vocab_size=3)
    d = Dataset(torch.tensor([[0, 4], [1, 2]], dtype=torch.int32), None, None, "tokens", "t", image_shape=(1, 1, 2))
    assert d.x.dtype == torch.int64 and d.vocab_size == 5 and d.shape == (2,) and d.image_shape == (1, 1, 2)
    assert "vocab_size=5" in repr(d)
    assert Dataset(torch.zeros(1, 2, dtype=torch.int64), None, None, "tokens", "t", vocab=["a", "b", "c"]).vocab_size == 3


def test_tokens_subset_keeps_fields_and_ordered_split_takes_the_tail() -> None:
    d = _tokens(10, vocab_size=3, vocab=["a", "b", "c"], image_shape=(1, 2, 2), ordered=True)
    sub = d.subset([7, 2])
    assert torch.equal(sub.x, d.x[[7, 2]]) and sub.y.tolist() == [1, 0]
    assert (sub.kind, sub.vocab_size, sub.vocab, sub.image_shape, sub.ordered) == ("tokens", 3, ["a", "b", "c"], (1, 2, 2), True)
    train, test = d.split(0.2, seed=5)
    assert torch.equal(train.x, d.x[:8]) and torch.equal(test.x, d.x[8:]) and torch.equal(test.y, d.y[8:])
    assert test.ordered and test.vocab == d.vocab and test.name == "tok/test"
    assert torch.equal(d.split(0.2, seed=6)[1].x, test.x)  # no randomness in an ordered split
    shuffled_test = _tokens(10, vocab_size=3).split(0.2, seed=5)[1]
    assert len(shuffled_test) == 2 and shuffled_test.vocab_size == 3


def test_decode() -> None:
    d = _tokens(2, vocab=["a", "b", "\n"])
    assert d.decode(d.x[0]) == ["ab\na"] and d.decode(d.x) == ["ab\na", "b\nab"]
    assert d.decode([[2, 0]]) == ["\na"]
    with pytest.raises(ValueError, match=r"cannot decode id 3 at \[0, 1\]"):
        d.decode(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no vocab"):
        _tokens(2, vocab_size=3).decode(torch.tensor([0, 1]))


def test_text_file_windows_vocab_and_errors(tmp_path: Path) -> None:
    text = "héllo wörld\r\nabc" * 3  # 16 characters per copy, \r kept as it is
    (tmp_path / "t.txt").write_bytes(text.encode("utf-8"))
    d = load_dataset("text_file", path=tmp_path / "t.txt", seq_len=5)
    assert d.kind == "tokens" and d.ordered and d.name == "t" and d.x.shape == (9, 5)
    assert d.vocab == sorted(set(text)) and d.vocab_size == len(set(text))
    assert d.decode(d.x) == [text[i : i + 5] for i in range(0, 45, 5)]  # the last 3 characters are dropped
    assert len(load_dataset("text_file", path=tmp_path / "t.txt", seq_len=5, limit=2)) == 2
    with pytest.raises(ValueError, match="fewer than one window"):
        load_dataset("text_file", path=tmp_path / "t.txt", seq_len=100)
    with pytest.raises(ValueError, match="seq_len"):
        load_dataset("text_file", path=tmp_path / "t.txt", seq_len=0)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe abc")
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8"):
        load_dataset("text_file", path=tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_dataset("text_file", path=tmp_path / "missing.txt")


def test_tinyshakespeare_path_options_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    (folder / "input.txt").write_text("To be, or not to be\n" * 4)
    for path in (folder / "input.txt", folder, tmp_path):
        assert load_dataset("tinyshakespeare", path=path, seq_len=8).x.shape == (10, 8)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.find_tinyshakespeare() == folder / "input.txt"
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=rf"looked for: {tmp_path / 'empty' / 'tinyshakespeare' / 'input.txt'}.*path=.*UDM_DATA"):
        load_dataset("tinyshakespeare")


def test_real_tinyshakespeare() -> None:
    file = data.find_tinyshakespeare()
    if file is None:
        pytest.skip(f"Tiny Shakespeare not found at {data.tinyshakespeare_candidates()}; set UDM_DATA to run this test")
    text = file.read_text(encoding="utf-8")
    d = load_dataset("tinyshakespeare")
    assert d.vocab_size == 65 and d.vocab == sorted(set(text)) and d.name == "tinyshakespeare"
    assert d.x.shape == (len(text) // 64, 64) == (17428, 64) and d.x.dtype == torch.int64
    assert d.decode(d.x[0]) == [text[:64]]
    assert d.decode(d.x[1]) == [text[64:128]]  # consecutive, non-overlapping windows
    assert d.decode(d.x[-1]) == [text[64 * 17427 : 64 * 17428]]
    train, test = d.split(0.1)
    assert (len(train), len(test)) == (15685, 1743)
    assert torch.equal(test.x, d.x[-1743:]) and torch.equal(train.x, d.x[:15685])
    short = load_dataset("tinyshakespeare", seq_len=256, limit=10)
    assert short.x.shape == (10, 256) and short.decode(short.x[9]) == [text[2304:2560]] and short.vocab_size == 65


def test_binary_mnist_on_synthetic_files(tmp_path: Path) -> None:
    images, labels = _write_mnist(tmp_path, 6, gz=True)
    d = load_dataset("binary_mnist", path=tmp_path)
    assert d.kind == "tokens" and d.x.shape == (6, 784) and d.vocab_size == 2 and d.image_shape == (1, 28, 28)
    assert torch.equal(d.x, torch.from_numpy((images.reshape(6, 784) / 255.0 > 0.5).astype(np.int64)))
    assert d.y.tolist() == labels.tolist() and d.num_classes == 10
    small = load_dataset("binary_mnist", path=tmp_path, size=7, threshold=0.25)
    pooled = images.astype(np.float32).reshape(6, 7, 4, 7, 4).mean(axis=(2, 4)) / 255.0
    assert small.x.shape == (6, 49) and small.image_shape == (1, 7, 7)
    assert torch.equal(small.x, torch.from_numpy((pooled.reshape(6, 49) > 0.25).astype(np.int64)))
    with pytest.raises(ValueError, match=r"size must divide the image side 28 \(one of 28, 14, 7, 4, 2, 1\).*got 5"):
        load_dataset("binary_mnist", path=tmp_path, size=5)
    with pytest.raises(ValueError, match="threshold"):
        load_dataset("binary_mnist", path=tmp_path, threshold=1.0)
    with pytest.raises(FileNotFoundError, match=r"looked in: .*load_dataset\('binary_mnist', path=DIR\).*UDM_DATA"):
        load_dataset("binary_mnist", path=tmp_path / "nowhere")


def test_real_binary_mnist() -> None:
    if data.find_mnist(split="test") is None:
        pytest.skip(f"MNIST files not found in {data.mnist_search_dirs()}; set UDM_DATA to run this test")
    d = load_dataset("binary_mnist", split="test", limit=500)
    assert d.x.shape == (500, 784) and set(d.x.unique().tolist()) == {0, 1} and d.y.tolist()[:3] == [7, 2, 1]
    assert 0.05 < d.x.float().mean() < 0.3  # ink is a minority of the pixels
    half = load_dataset("binary_mnist", split="test", limit=500, size=14)
    assert half.x.shape == (500, 196) and half.image_shape == (1, 14, 14) and set(half.x.unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="size must divide"):
        load_dataset("binary_mnist", split="test", limit=5, size=5)


def test_array_tokens_kind(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", np.array([[0, 3], [2, 1]], dtype=np.uint8))
    d = load_dataset("array", path=tmp_path / "ids.npy", kind="tokens")
    assert d.kind == "tokens" and d.x.dtype == torch.int64 and d.vocab_size == 4


# ----------------------------------------------------------------------------- token pictures and text samples


def test_tokens_to_images_and_grid(tmp_path: Path) -> None:
    from udm import viz

    x = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])
    images = viz.tokens_to_images(x, (1, 2, 2), 2)
    assert images.shape == (2, 1, 2, 2) and images.dtype == torch.float32
    assert images[0, 0].tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    assert viz.tokens_to_images(torch.tensor([[0, 1, 2]]), (1, 1, 3), 3).flatten().tolist() == [-1.0, 0.0, 1.0]
    out = viz.save_image_grid(images, tmp_path / "tokens.png", scale=1, padding=0, nrow=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.array([[0, 255, 255, 255], [255, 0, 0, 0]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        viz.tokens_to_images(torch.tensor([[0, 2, 0, 0]]), (1, 2, 2), 2)
    with pytest.raises(ValueError, match="L = 4"):
        viz.tokens_to_images(torch.zeros(2, 5, dtype=torch.int64), (1, 2, 2), 2)
    with pytest.raises(ValueError, match="integer"):
        viz.tokens_to_images(torch.zeros(2, 4), (1, 2, 2), 2)


def test_save_text_samples(tmp_path: Path) -> None:
    from udm import viz

    path = viz.save_text_samples(tmp_path / "out" / "samples.txt", ["Thou art\nmore lovely", "é ✓"])
    assert path == tmp_path / "out" / "samples.txt"
    assert path.read_bytes().decode("utf-8") == "--- sample 0 ---\nThou art\nmore lovely\n\n--- sample 1 ---\né ✓\n\n"
    assert [p.name for p in path.parent.iterdir()] == ["samples.txt"]  # no temporary file left behind
    assert viz.save_text_samples(path, "one").read_text(encoding="utf-8") == "--- sample 0 ---\none\n\n"
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        viz.save_text_samples(path, ["a", 3])
