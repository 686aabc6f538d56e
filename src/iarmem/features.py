"""Image feature extractors for the quality metrics (FID, KID, precision/recall) and the extraction attack.

A :class:`FeatureExtractor` maps images in [0, 1] to [B, D] float32 features; resizing and
normalisation happen inside, so every caller hands over the same thing. Three sources:

- ``trained``: a small CNN classifier that iarmem trains on the dataset itself (offline, 10-20 s
  of one CPU core for the bundled MNIST). Its penultimate layer gives the features, its
  head a class prediction (used to check that samples show the class asked for).
- ``torchscript:PATH[:SIZE]``: any TorchScript module from normalised [B, 3, S, S] images to
  [B, D] or [B, D, 1, 1], e.g. an exported Inception-v3 pool3 for the standard ImageNet FID.
- ``sscd:PATH``: the SSCD copy-detection model (TorchScript), L2-normalised descriptors.

A TorchScript file is a program: loading one runs code its author wrote. Only load files you
trust (your own exports, the files the SSCD authors publish).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iarmem.data import ImageDataset, ImageTransform, balanced_sample, load_batch, split_holdout
from iarmem.errors import UserError
from iarmem.fileio import atomic_path, write_json
from iarmem.progress import log
from iarmem.train.loop import TrainConfig, Trainer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSCD_SIZE = 320
CNN_STEPS = 300  # ~10 s on one CPU core for the bundled MNIST at 32 px; held-out accuracy ~0.98
CNN_VERSION = 1  # bump when the CNN or its recipe changes, so cached files are retrained
SPEC_FORMS = "trained, trained:PATH, torchscript:PATH[:SIZE] or sscd:PATH"


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """torch.jit is deprecated in favour of torch.export, but SSCD and Inception ship as TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        yield


class FeatureExtractor:
    """[B, 3, H, W] images in [0, 1] -> [B, dim] float32 features, computed in batches without gradients.

    Images are resized to ``input_size`` (bilinear, antialiased) and normalised with ``mean``/``std``
    on the extractor's device; the features come back on the device of the input. Grey [B, 1, H, W]
    images are repeated to 3 channels.
    """

    def __init__(self, module: nn.Module, *, name: str, input_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, l2_normalize: bool = False, batch_size: int = 64,
                 dim: int | None = None, path: str | os.PathLike | None = None) -> None:
        if input_size < 1 or batch_size < 1:
            raise UserError(f"feature input size and batch size must be >= 1, got {input_size}, {batch_size}")
        self.module = module.eval()
        self.name = name
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.l2_normalize = l2_normalize
        self.batch_size = batch_size
        self.path = Path(path) if path is not None else None  # the file it came from, for run records
        self.dim = int(dim) if dim is not None else self._probe_dim()

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.module.parameters(), self.module.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> FeatureExtractor:
        """Move the network to ``device`` (in place, like ``nn.Module.to``) and return self."""
        self.module.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "input_size": self.input_size, "mean": list(self.mean),
                "std": list(self.std), "l2_normalize": self.l2_normalize,
                "path": None if self.path is None else str(self.path)}

    def preprocess(self, images01: Tensor) -> Tensor:
        """Resize and normalise a batch on the extractor's device."""
        if images01.ndim != 4 or images01.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got shape {list(images01.shape)}")
        x = images01.to(self.device, torch.float32).expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _run(self, x: Tensor, method: str = "forward") -> Tensor:
        out = getattr(self.module, method)(x) if method != "forward" else self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4 and out.shape[-2:] == (1, 1):
            out = out.flatten(1)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise UserError(f"feature network {self.name} returned shape {list(out.shape)}; it must map "
                            f"[B, 3, S, S] images to [B, D] or [B, D, 1, 1]")
        return out.float()

    @torch.no_grad()
    def __call__(self, images01: Tensor) -> Tensor:
        outs = []
        for s in range(0, images01.shape[0], self.batch_size):
            f = self._run(self.preprocess(images01[s:s + self.batch_size]))
            outs.append(F.normalize(f, dim=1) if self.l2_normalize else f)
        if not outs:
            return torch.empty(0, self.dim, device=images01.device)
        return torch.cat(outs).to(images01.device)

    @property
    def has_classifier(self) -> bool:
        """True when the network also predicts classes (iarmem's trained CNN: a ``logits`` method)."""
        return hasattr(self.module, "logits")

    @torch.no_grad()
    def logits(self, images01: Tensor) -> Tensor:
        """[B, K] class logits of the trained CNN (only when ``has_classifier``)."""
        if not self.has_classifier:
            raise ValueError(f"feature network {self.name} has no classifier head")
        outs = [self._run(self.preprocess(images01[s:s + self.batch_size]), "logits")
                for s in range(0, images01.shape[0], self.batch_size)]
        return torch.cat(outs).to(images01.device)

    @torch.no_grad()
    def _probe_dim(self) -> int:
        x = torch.zeros(2, 3, self.input_size, self.input_size)
        try:
            return int(self._run(self.preprocess(x)).shape[1])
        except UserError:
            raise
        except Exception as e:  # a scripted module fails with a RuntimeError on a wrong input layout
            raise UserError(f"feature network {self.name} fails on [2, 3, {self.input_size}, {self.input_size}] "
                            f"inputs ({str(e).splitlines()[0][:160]}); check its input size") from e


# ---- TorchScript files --------------------------------------------------------------------------
def _load_script(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"feature network file not found: {p} (check the path)")
    try:
        with _quiet_jit():
            return torch.jit.load(str(p), map_location=map_location)
    except Exception as e:
        raise UserError(f"{p} is not a readable TorchScript file ({str(e).splitlines()[0][:120]}); export the "
                        f"network with torch.jit.script(...).save(path) or re-download it") from e


def load_torchscript(path: str | os.PathLike, input_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, *, name: str | None = None, l2_normalize: bool = False,
                     device: str | torch.device = "cpu") -> FeatureExtractor:
    """Any TorchScript network from normalised [B, 3, S, S] images to [B, D] (or [B, D, 1, 1]) features.

    The file runs code when loaded: load only files you trust.
    """
    module = _load_script(path, device)
    return FeatureExtractor(module, name=name or f"torchscript:{Path(path).name}@{input_size}",
                            input_size=input_size, mean=mean, std=std, l2_normalize=l2_normalize, path=path)


def sscd(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """SSCD copy-detection descriptors (e.g. ``sscd_disc_mixup.torchscript.pt``): 320 px, ImageNet
    normalisation, L2-normalised, so that a dot product is the cosine similarity the attack thresholds."""
    return load_torchscript(path, SSCD_SIZE, IMAGENET_MEAN, IMAGENET_STD, name=f"sscd:{Path(path).name}",
                            l2_normalize=True, device=device)


# ---- the CNN iarmem trains ------------------------------------------------------------------------
class FeatureCNN(nn.Module):
    """A stride-2 stem, three conv-BN-ReLU stages and global average pooling; ``forward`` gives the
    pooled features (dim 4 x width). The stem halves the resolution first: 32 px digits keep their
    shape at 16 px, and the network trains four times faster on a shared CPU."""

    def __init__(self, num_classes: int, input_size: int, width: int = 32, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        w = width

        def stage(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *stage(3, w // 2, stride=2), *stage(w // 2, w), nn.MaxPool2d(2), *stage(w, 2 * w), nn.MaxPool2d(2),
            *stage(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)
        # kept as attributes so that the saved TorchScript file describes its own input
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    @torch.jit.export
    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random zoom (0.9-1.15) and shift (+-6 %): covers the families' different eval crops of one image."""
    b = x.shape[0]
    scale = 1.0 / (0.9 + 0.25 * torch.rand(b, generator=generator))
    shift = (torch.rand(b, 2, generator=generator) - 0.5) * 0.12
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def dataset_key(ds: ImageDataset) -> str:
    """A short fingerprint of a dataset (its description and labels), to name cached CNN files."""
    h = hashlib.sha256(ds.describe().encode())
    h.update(np.ascontiguousarray(ds.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


def sidecar(path: str | os.PathLike) -> Path:
    """The JSON record beside a trained CNN file."""
    return Path(path).with_suffix(".json")


def train_feature_extractor(ds: ImageDataset, out_path: str | os.PathLike, image_size: int = 32, steps: int = CNN_STEPS,
                            seed: int = 0, *, batch_size: int = 64, lr: float = 3e-3, width: int = 32,
                            holdout_fraction: float = 0.1, max_images: int = 10_000,
                            device: str | torch.device = "cpu") -> Path:
    """Train the feature CNN on ``ds`` and save it as TorchScript (atomically) with a JSON record beside it.

    A class-balanced ``holdout_fraction`` of (at most ``max_images``) images is held out; the JSON
    records the accuracy on it. Large datasets are thinned to ``max_images`` (class-balanced),
    which is plenty for a 32-64 px feature network; for ImageNet-scale numbers use an exported
    Inception instead (docs/QUALITY.md).
    """
    out = Path(out_path)
    labels = np.asarray(ds.labels)
    if len(labels) == 0:
        raise UserError(f"{ds.describe()}: no images to train the feature network on")
    num_classes = max(len(ds.classes), int(labels.max()) + 1)
    ids = np.arange(len(labels)) if len(labels) <= max_images else balanced_sample(
        labels, max_images, seed=seed, purpose="featcnn")
    n_held = max(1, int(round(holdout_fraction * len(ids))))
    if n_held >= len(ids) or not 0 < holdout_fraction < 1:
        raise UserError(f"cannot hold out {holdout_fraction:.0%} of {len(ids)} images to test the feature network")
    train_ids, held_ids = split_holdout(labels, n_held, seed=seed, pool=ids)
    tf = ImageTransform(image_size, "shorter", 1.0, "bicubic", "center", False, (0.0, 1.0))
    log(f"feature CNN: loading {len(ids)} images of {ds.describe()} at {image_size} px")
    x_train, y_train = load_batch(ds, train_ids, tf, seed)
    x_held, y_held = load_batch(ds, held_ids, tf, seed)
    pos = {int(i): k for k, i in enumerate(train_ids)}

    torch.manual_seed(seed)
    net = FeatureCNN(num_classes, image_size, width).to(device)
    mean = torch.tensor(net.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(net.std, device=device).view(1, 3, 1, 1)

    def loss_fn(batch: np.ndarray, generator: torch.Generator, step: int) -> Tensor:
        rows = torch.tensor([pos[int(i)] for i in batch])
        x = _augment(x_train[rows], generator).to(device)
        return F.cross_entropy(net.logits((x - mean) / std), y_train[rows].to(device))

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=5e-4, warmup_steps=min(20, steps // 5),
                      ckpt_every=steps, log_every=max(1, steps // 20), seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.enable_grad(), tempfile.TemporaryDirectory(prefix=".featcnn-", dir=out.parent) as tmp:
        trainer = Trainer(net, loss_fn, train_ids, cfg, Path(tmp), desc="feature CNN")
        trainer.run()
        final_loss = trainer.history[-1][1] if trainer.history else float("nan")
    net.eval()
    acc = _accuracy(net, x_held, y_held, mean, std)
    train_acc = _accuracy(net, x_train[:len(x_held)], y_train[:len(x_held)], mean, std)
    with _quiet_jit(), atomic_path(out) as tmp_file:
        torch.jit.script(net.cpu()).save(str(tmp_file))
    write_json(sidecar(out), {
        "kind": "iarmem feature CNN", "version": CNN_VERSION, "file": out.name, "dataset": ds.describe(),
        "dataset_key": dataset_key(ds), "num_classes": num_classes, "image_size": image_size, "dim": 4 * width,
        "mean": net.mean, "std": net.std, "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "width": width, "train_images": int(len(train_ids)), "heldout_images": int(len(held_ids)),
        "heldout_accuracy": acc, "train_accuracy_sample": train_acc, "final_loss": final_loss,
    })
    log(f"feature CNN: held-out accuracy {acc:.3f} on {len(held_ids)} images -> {out}")
    return out


@torch.no_grad()
def _accuracy(net: FeatureCNN, x: Tensor, y: Tensor, mean: Tensor, std: Tensor) -> float:
    dev = mean.device
    pred = torch.cat([net.logits((x[s:s + 256].to(dev) - mean) / std).argmax(1).cpu() for s in range(0, len(x), 256)])
    return float((pred == y).double().mean())


def module_meta(module: nn.Module) -> tuple[int | None, list[float] | None, list[float] | None]:
    """(input_size, mean, std) a network file declares about its input: attributes (a scripted module) or
    buffers (they survive ``torch.jit.trace``); None for what it does not declare."""

    def get(name: str) -> Any:
        value = getattr(module, name, None)
        return value.tolist() if isinstance(value, Tensor) else value

    size, mean, std = get("input_size"), get("mean"), get("std")
    size = int(size) if isinstance(size, (int, float)) else None
    mean = [float(v) for v in mean] if isinstance(mean, (list, tuple)) and len(mean) == 3 else None
    std = [float(v) for v in std] if isinstance(std, (list, tuple)) and len(std) == 3 else None
    return size, mean, std


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The CNN written by :func:`train_feature_extractor` (its input size and normalisation are in the file)."""
    module = _load_script(path, device)
    size, mean, std = module_meta(module)
    if size is None or mean is None or std is None or not hasattr(module, "logits"):
        raise UserError(f"{path} is not a feature CNN written by iarmem (no input_size/mean/std/logits); load it "
                        f"with --features torchscript:{path}:SIZE")
    return FeatureExtractor(module, name=f"iarmem-cnn:{Path(path).name}", input_size=size, mean=mean, std=std,
                            path=path)


def cached_cnn_path(ds: ImageDataset, cache_dir: str | os.PathLike, image_size: int, seed: int,
                    steps: int) -> Path:
    """Where the CNN for this dataset, size, seed and recipe lives in ``cache_dir``."""
    return Path(cache_dir) / f"featcnn-v{CNN_VERSION}-{dataset_key(ds)}-{image_size}px-s{seed}-{steps}steps.pt"


def trained_for(ds: ImageDataset, cache_dir: str | os.PathLike, image_size: int = 32, seed: int = 0,
                steps: int = CNN_STEPS, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The cached CNN of this dataset in ``cache_dir``, trained first if it is not there (or is damaged)."""
    path = cached_cnn_path(ds, cache_dir, image_size, seed, steps)
    if path.is_file() and sidecar(path).is_file():
        try:
            record = json.loads(sidecar(path).read_text())
            if record.get("dataset_key") == dataset_key(ds):
                acc = float(record.get("heldout_accuracy", float("nan")))
                log(f"feature CNN: reusing {path} (held-out accuracy {acc:.3f})")
                return load_trained(path, device)
        except (OSError, json.JSONDecodeError, UserError):
            log(f"feature CNN: {path} is damaged; training it again")
    train_feature_extractor(ds, path, image_size, steps, seed, device=device)
    return load_trained(path, device)


def parse_feature_spec(spec: str | None) -> tuple[str, Path | None, int | None]:
    """(kind, path, size) of a CLI spec, checked for form and for the file's presence (no loading)."""
    text = (spec or "trained").strip()
    kind, _, rest = text.partition(":")
    if kind == "trained" and not rest:
        return "trained", None, None
    if kind not in ("trained", "torchscript", "sscd") or not rest:
        raise UserError(f"unknown feature extractor {text!r} (--features); use {SPEC_FORMS}")
    path, size = rest, None
    head, _, tail = rest.rpartition(":")
    if kind == "torchscript" and head and tail.isdigit():
        path, size = head, int(tail)
        if size < 1:
            raise UserError(f"feature input size must be >= 1 in {text!r}")
    if not Path(path).is_file():
        raise UserError(f"feature network file not found: {path} (from --features {text}); check the path")
    return kind, Path(path), size


def resolve_features(spec: str | None, ds: ImageDataset, cache_dir: str | os.PathLike | None, image_size: int = 32,
                     seed: int = 0, *, device: str | torch.device = "cpu", steps: int = CNN_STEPS) -> FeatureExtractor:
    """A feature extractor from a CLI spec: None/"trained", "trained:PATH", "torchscript:PATH[:SIZE]", "sscd:PATH".

    ``trained`` trains (or reuses) the CNN of ``ds`` in ``cache_dir``. ``torchscript`` takes the input
    side, mean and std the file declares (:func:`module_meta`), else 299 (Inception-v3) and ImageNet's
    statistics; a SIZE in the spec wins.
    """
    kind, path, size = parse_feature_spec(spec)
    if path is None:
        if cache_dir is None:
            raise UserError("the trained feature CNN needs a cache folder (--features-cache DIR)")
        return trained_for(ds, cache_dir, image_size, seed, steps, device)
    if kind == "trained":
        return load_trained(path, device)
    if kind == "sscd":
        return sscd(path, device)
    module = _load_script(path, device)
    meta_size, mean, std = module_meta(module)
    size = size or meta_size or 299
    return FeatureExtractor(module, name=f"torchscript:{path.name}@{size}", input_size=size,
                            mean=mean or IMAGENET_MEAN, std=std or IMAGENET_STD, path=path)
