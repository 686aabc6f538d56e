"""Feature extractors: the CNN iarmem trains on MNIST, TorchScript files, SSCD descriptors, CLI specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from iarmem.data import bundled_mnist
from iarmem.errors import UserError
from iarmem.features import (
    FeatureExtractor,
    cached_cnn_path,
    load_torchscript,
    load_trained,
    resolve_features,
    sidecar,
    sscd,
    train_feature_extractor,
)

# the test writes TorchScript files the way users export SSCD / Inception; torch marks jit as deprecated
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit:DeprecationWarning")




class Pooled(nn.Module):
    """A stand-in for Inception / SSCD: [B, 3, S, S] -> [B, 6, 1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3), keepdim=True)


def _script(tmp_path: Path, name: str = "net.pt") -> Path:
    torch.manual_seed(0)
    path = tmp_path / name
    torch.jit.script(Pooled().eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def mnist():
    return bundled_mnist()


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory, mnist) -> Path:
    """The default recipe on the bundled MNIST at 32 px (about 10-20 s on one core)."""
    return train_feature_extractor(mnist, tmp_path_factory.mktemp("cnn") / "cnn.pt", image_size=32, seed=0)


def test_cnn_classifies_heldout_mnist(trained_cnn: Path, mnist) -> None:
    record = json.loads(sidecar(trained_cnn).read_text())
    assert record["heldout_accuracy"] > 0.9 and record["heldout_images"] == 500
    fe = load_trained(trained_cnn)
    assert fe.dim == 128 and fe.input_size == 32 and fe.has_classifier
    # the loaded file reproduces the recorded accuracy on 100 held-out-sized images (28 px, resized inside)
    images = torch.stack([torch.from_numpy(np.array(mnist[i][0])).permute(2, 0, 1)
                          for i in range(0, 5000, 50)]).float() / 255
    labels = torch.as_tensor([mnist[i][1] for i in range(0, 5000, 50)])
    assert (fe.logits(images).argmax(1) == labels).float().mean() > 0.9
    feats = fe(images)
    assert feats.shape == (100, 128) and feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_cnn_training_is_seeded(tmp_path: Path, mnist) -> None:
    a = train_feature_extractor(mnist, tmp_path / "a.pt", image_size=16, steps=8, seed=1, max_images=300)
    b = train_feature_extractor(mnist, tmp_path / "b.pt", image_size=16, steps=8, seed=1, max_images=300)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_trained(a)(x), load_trained(b)(x))
    assert not list(tmp_path.glob(".featcnn-*")), "the training folder is removed"


def test_torchscript_round_trip(tmp_path: Path) -> None:
    path = _script(tmp_path)
    fe = load_torchscript(path, input_size=24)
    assert fe.dim == 6 and fe.name.startswith("torchscript:net.pt")
    x = torch.rand(5, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    out = fe(x)
    assert out.shape == (5, 6) and out.dtype == torch.float32
    # same as running the module by hand on the resized, normalised images
    ref = torch.jit.load(str(path))(fe.preprocess(x)).flatten(1)
    torch.testing.assert_close(out, ref)
    # batching does not change the result; grey images are broadcast to RGB
    fe.batch_size = 2
    torch.testing.assert_close(fe(x), out)
    assert fe(x[:, :1]).shape == (5, 6)
    assert fe.to("cpu") is fe and fe(torch.empty(0, 3, 24, 24)).shape == (0, 6)


def test_sscd_descriptors_are_unit_length(tmp_path: Path) -> None:
    fe = sscd(_script(tmp_path, "sscd_disc_mixup.torchscript.pt"))
    assert fe.input_size == 320 and fe.name == "sscd:sscd_disc_mixup.torchscript.pt"
    out = fe(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_bad_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_torchscript(tmp_path / "missing.pt", 32)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(UserError, match="not a readable TorchScript"):
        load_torchscript(junk, 32)
    with pytest.raises(UserError, match="not a feature CNN written by iarmem"):
        load_trained(_script(tmp_path))

    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # [B, 3, S, S]: not a feature vector

    torch.jit.script(Flat()).save(str(tmp_path / "flat.pt"))
    with pytest.raises(UserError, match=r"\[B, D\]"):
        load_torchscript(tmp_path / "flat.pt", 8)


def test_resolve_specs(tmp_path: Path, mnist, trained_cnn: Path) -> None:
    path = _script(tmp_path)
    assert resolve_features(f"torchscript:{path}:20", mnist, None).input_size == 20
    assert resolve_features(f"torchscript:{path}", mnist, None).input_size == 299  # Inception's side by default
    assert resolve_features(f"sscd:{path}", mnist, None).l2_normalize
    assert resolve_features(f"trained:{trained_cnn}", mnist, None).dim == 128
    for bad in ("inception", "torchscript:", "sscd", "clip:model.pt"):
        with pytest.raises(UserError, match="unknown feature extractor"):
            resolve_features(bad, mnist, tmp_path)
    with pytest.raises(UserError, match="cache folder"):
        resolve_features("trained", mnist, None)


def test_torchscript_file_declares_its_input(tmp_path: Path, mnist) -> None:
    """The Inception recipe of docs/QUALITY.md: a traced wrapper whose buffers give side and normalisation."""

    class Declared(Pooled):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("input_size", torch.tensor(40))
            self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]))
            self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]))

    path = tmp_path / "declared.pt"
    torch.jit.trace(Declared().eval(), torch.zeros(1, 3, 40, 40)).save(str(path))
    fe = resolve_features(f"torchscript:{path}", mnist, None)
    assert (fe.input_size, fe.mean, fe.std) == (40, (0.5,) * 3, (0.5,) * 3)
    x = torch.full((1, 3, 40, 40), 0.75)
    torch.testing.assert_close(fe.preprocess(x), torch.full((1, 3, 40, 40), 0.5))  # [0, 1] -> [-1, 1]
    assert resolve_features(f"torchscript:{path}:64", mnist, None).input_size == 64  # the spec's size wins


def test_trained_spec_caches_per_dataset(tmp_path: Path, mnist, monkeypatch) -> None:
    calls = []

    def fake_train(ds, out_path, image_size, steps, seed, **kw):  # noqa: ANN001, ANN003
        calls.append(out_path)
        return train_feature_extractor(ds, out_path, image_size, steps=3, seed=seed, max_images=200)

    monkeypatch.setattr("iarmem.features.train_feature_extractor", fake_train)
    a = resolve_features(None, mnist, tmp_path, image_size=16, seed=0, steps=3)
    b = resolve_features("trained", mnist, tmp_path, image_size=16, seed=0, steps=3)
    assert len(calls) == 1 and a.path == b.path == cached_cnn_path(mnist, tmp_path, 16, 0, 3)
    sidecar(a.path).write_text("{ damaged")
    resolve_features("trained", mnist, tmp_path, image_size=16, seed=0, steps=3)
    assert len(calls) == 2  # a damaged record is retrained, not trusted


def test_extractor_rejects_bad_images(tmp_path: Path) -> None:
    fe: FeatureExtractor = load_torchscript(_script(tmp_path), 16)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        fe(torch.rand(3, 16, 16))
