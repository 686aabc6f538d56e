"""Datasets: bundled MNIST, image folders (with and without a class index), path lists, open_dataset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iarmem.data import (
    DataWarning,
    ImageDataset,
    bundled_mnist,
    image_folder,
    open_dataset,
    path_list,
    read_class_index,
)
from iarmem.errors import UserError


def _png(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)
    return path


def _data_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


@pytest.fixture(scope="module")
def mnist():
    return bundled_mnist()


def test_bundled_mnist(mnist) -> None:
    assert isinstance(mnist, ImageDataset)
    assert len(mnist) == 5000
    assert mnist.labels.dtype == np.int64
    assert np.bincount(mnist.labels).tolist() == [500] * 10
    assert mnist.classes == [str(k) for k in range(10)]
    img, label = mnist[1234]
    assert img.mode == "RGB" and img.size == (28, 28)
    arr = np.asarray(img)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all() and arr.max() > 100
    assert label == mnist.labels[1234]
    assert mnist.source_id(123) == "mnist5k:123"
    assert "MNIST-5k" in mnist.describe() and "5000 images" in mnist.describe()
    assert mnist[-1][1] == mnist.labels[-1]
    with pytest.raises(IndexError):
        mnist[5000]
    with pytest.raises(ValueError):
        mnist.labels[0] = 3  # read-only: nobody can corrupt a dataset's labels


def test_open_dataset_mnist() -> None:
    ds = open_dataset("mnist")
    assert len(ds) == 5000
    with pytest.raises(UserError):
        open_dataset("mnist", num_classes=5)


def _make_folder(root: Path) -> None:
    for k, cls in enumerate(["cat", "ant", "bee"]):  # sorted: ant=0, bee=1, cat=2
        for j in range(3):
            _png(root / cls / f"img{j}.png", 40 * k + j)
    _png(root / "bee" / "sub" / "deep.PNG", 99, mode="L")  # nested, upper-case extension, grey
    (root / "ant" / "zero.jpg").write_bytes(b"")
    (root / "cat" / "text.jpg").write_text("this is not a jpeg\n")
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")


def test_folder_skips_unreadable_with_one_warning(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = image_folder(tmp_path)
    msgs = _data_warnings(record)
    assert len(msgs) == 1 and msgs[0].startswith("skipped 2 unreadable files in ")
    assert len(ds) == 10
    assert ds.classes == ["ant", "bee", "cat"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert ds.source_id(0) == "ant/img0.png"
    assert ds.source_id(6) == "bee/sub/deep.PNG"
    img, label = ds[6]
    assert img.mode == "RGB" and label == 1
    assert "2 unreadable" in ds.describe() and "10 images" in ds.describe()


def test_folder_truncated_png_is_skipped(tmp_path: Path) -> None:
    good = _png(tmp_path / "a" / "good.png", 1, size=(64, 64))
    data = good.read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.warns(DataWarning, match="skipped 1 unreadable files"):
        ds = image_folder(tmp_path)
    assert [ds.source_id(i) for i in range(len(ds))] == ["a/good.png"]


def test_folder_full_check_catches_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "x.jpg", quality=95)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cut.jpg").write_bytes((tmp_path / "x.jpg").read_bytes()[:600])
    _png(tmp_path / "a" / "ok.png", 3)
    with pytest.warns(DataWarning, match="skipped 1 unreadable"):
        ds = image_folder(tmp_path, check="full")
    assert len(ds) == 1


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        image_folder(tmp_path / "missing")
    file = tmp_path / "f.png"
    _png(file, 0)
    with pytest.raises(UserError, match="is a file"):
        image_folder(file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        image_folder(empty)
    (empty / "cls").mkdir()
    with pytest.raises(UserError, match="no readable images"):
        image_folder(empty)
    (empty / "cls" / "bad.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(UserError, match="no readable images"):
            image_folder(empty)
    flat = tmp_path / "flat"
    _png(flat / "a.png", 0)
    with pytest.raises(UserError, match="class-index JSON"):
        image_folder(flat)
    twocls = tmp_path / "two"
    _png(twocls / "x" / "a.png", 0)
    _png(twocls / "y" / "a.png", 0)
    with pytest.raises(UserError, match="num_classes=1"):
        image_folder(twocls, num_classes=1)


def test_folder_with_class_index_json(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for name in ["a.png", "b.png", "c.png", "d.png"]:
        _png(flat / name, 10)
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"a.png": 2, "./b.png": 0, "c.png": 1}))
    with pytest.warns(DataWarning, match="skipped 1 images in .* not in the class index"):
        ds = image_folder(flat, class_index=index)
    assert [ds.source_id(i) for i in range(len(ds))] == ["a.png", "b.png", "c.png"]
    assert ds.labels.tolist() == [2, 0, 1]
    assert ds.classes == ["0", "1", "2"]
    with pytest.warns(DataWarning):
        assert len(image_folder(flat, class_index=index, num_classes=10).classes) == 10


def test_folder_with_imagenet_wnid_map(tmp_path: Path) -> None:
    root = tmp_path / "train"
    _png(root / "n02" / "x.JPEG", 1)
    _png(root / "n02" / "y.jpeg", 2)
    _png(root / "n01" / "z.png", 3)
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps({"0": ["n02", "tench"], "1": ["n01", "goldfish"]}))
    mapping, names = read_class_index(index)
    assert mapping == {"n02": 0, "n01": 1} and names == ["tench", "goldfish"]
    ds = open_dataset(str(root), class_index=index)
    assert ds.classes == ["tench", "goldfish"]
    assert {ds.source_id(i): int(ds.labels[i]) for i in range(len(ds))} == {
        "n01/z.png": 1,
        "n02/x.JPEG": 0,
        "n02/y.jpeg": 0,
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"a.png": "cat"}))
    with pytest.raises(UserError, match="class index"):
        image_folder(root, class_index=bad)
    with pytest.raises(UserError, match="not found"):
        image_folder(root, class_index=tmp_path / "nope.json")


def test_path_list(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png", 1)
    _png(tmp_path / "imgs" / "b c.png", 2, mode="L")
    absolute = _png(tmp_path / "elsewhere" / "d.png", 3)
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(
        "# images of the test\n\n"
        "../imgs/a.png 3\n"
        "../imgs/b c.png,1\n"
        f"  {absolute}\t0  \n"
    )
    ds = path_list(lst, num_classes=4)
    assert len(ds) == 3
    assert ds.labels.tolist() == [3, 1, 0]
    assert ds.classes == ["0", "1", "2", "3"]
    assert ds.source_id(1) == "../imgs/b c.png"
    assert ds[1][0].mode == "RGB"
    assert len(open_dataset(str(lst)).classes) == 4  # max label + 1 without num_classes

    csv = tmp_path / "lists" / "train.csv"
    csv.write_text("path,label\n../imgs/a.png,0\n")
    assert open_dataset(csv).labels.tolist() == [0]


def test_path_list_errors_name_the_line(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 1)
    lst = tmp_path / "l.txt"
    lst.write_text("# header comment\na.png 0\na.png 7\n")
    with pytest.raises(UserError, match=r"l\.txt:3: label 7 is outside \[0, 5\)"):
        path_list(lst, num_classes=5)
    lst.write_text("a.png 0\n\na.png cat\n")
    with pytest.raises(UserError, match=r"l\.txt:3: label 'cat' is not an integer"):
        path_list(lst)
    lst.write_text("a.png -1\n")
    with pytest.raises(UserError, match=r"l\.txt:1:"):
        path_list(lst)
    lst.write_text("a.png 0\nmissing.png 1\n")
    with pytest.raises(UserError, match=r"l\.txt:2: image missing.png not found"):
        path_list(lst)
    lst.write_text("a.png\n")
    with pytest.raises(UserError, match=r"l\.txt:1: expected 'path label'"):
        path_list(lst)
    lst.write_text("# nothing\n")
    with pytest.raises(UserError, match="names no images"):
        path_list(lst)
    (tmp_path / "z.png").write_bytes(b"")
    lst.write_text("a.png 0\nz.png 1\n")
    with pytest.warns(DataWarning, match="skipped 1 unreadable files"):
        assert len(path_list(lst)) == 1


def test_open_dataset_dispatch_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "d" / "k" / "a.png", 1)
    assert len(open_dataset(tmp_path / "d")) == 1
    with pytest.raises(UserError, match="not found"):
        open_dataset(str(tmp_path / "nothing"))
    other = tmp_path / "x.json"
    other.write_text("{}")
    with pytest.raises(UserError, match="neither a folder nor a path list"):
        open_dataset(other)
