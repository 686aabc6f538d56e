"""The attack on models whose answer is known: a copier is 100% extracted, a noise source 0%.

The fakes wrap the real tiny presets (real tokenizers and decoders, random weights) and replace
only ``generate``: the copier returns the ground-truth tokens it is prompted with, the noise source
random tokens after the prefix, the class memorizer the first image it saw of each class, the member
copier the images whose ground-truth tokens it is given as members (``iar.members``: token sums), and
noise for every other (or, for a prompt in ``iar.redirect``, another image's tokens).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iarmem.attack import AttackSettings, attack_ids, run_attack
from iarmem.attack.generate import default_prefix, generate_batch, prefix_tokens
from iarmem.attack.similarity import PSNR_CAP_DB
from iarmem.data import bundled_mnist, make_plan
from iarmem.errors import UserError
from iarmem.models import Tokens, build, get_preset
from iarmem.models.base import IAR
from iarmem.models.registry import family_class
from iarmem.tokens import load_views


def fake(preset: str, behaviour: str) -> IAR:
    """A tiny preset whose generate copies / emits noise / emits the first image seen of the class."""
    p = get_preset(preset)
    base = family_class(p.family)

    class Fake(base):  # type: ignore[misc, valid-type]
        def generate(self, labels, prefix=None, prefix_len=0, **kw):  # noqa: ANN001, ANN003, ANN201
            ids = prefix.ids_BL.clone()
            if behaviour == "noise" or behaviour == "members":
                start = prefix_tokens(self, prefix_len)
                g = torch.Generator().manual_seed(int(ids.sum()))
                noise = torch.randint(0, self.vocab_size, ids[:, start:].shape, generator=g)
                keep = torch.tensor([behaviour == "members" and int(r.sum()) in self.members for r in ids])
                sums = [int(r.sum()) for r in ids]
                ids[~keep, start:] = noise[~keep]
                for b, total in enumerate(sums):  # a prompt redirected to another image's tokens
                    if total in self.redirect:
                        ids[b, start:] = self.redirect[total][start:]
            elif behaviour == "class":
                for b, c in enumerate(labels.tolist()):
                    ids[b] = self.memory.setdefault(c, ids[b].clone())
            return Tokens(ids, prefix.grids)

    torch.manual_seed(0)
    iar = Fake.from_official(p.tokenizer_kwargs, p.model_kwargs).eval()
    iar.memory, iar.members, iar.redirect = {}, set(), {}
    return iar


@pytest.fixture(scope="module")
def data():
    ds = bundled_mnist()
    return ds, make_plan(ds.labels, num_train=10, plant=10, copies=2, seed=0, dataset=ds.describe())


SMALL = AttackSettings(top=1, batch_size=16, calibrate=False)  # fixed rule: a copier copies held-out images too


def test_a_copying_model_is_fully_extracted(data) -> None:
    ds, plan = data
    summary = run_attack(fake("tiny-var", "copy"), ds, plan, SMALL.replace(metric="ssim"))
    assert summary["candidates"] == 10 and summary["extracted"] == 10 and summary["metric"] == "ssim"
    assert summary["by_group"]["heldout"]["extracted"] == 10  # a copier copies anything it is shown
    assert summary["copies_other"] == {"candidates": 0, "heldout": 0}


def test_a_copying_raster_model_passes_every_measure(data) -> None:
    ds, plan = data
    res = attack_ids(fake("tiny-llamagen", "copy"), ds, plan.planted_ids, settings=SMALL.replace(metric="tokens"))
    assert res.extracted.all() and len(res.ids) == 10
    m = res.measures
    assert (m["tokens"] == 1).all() and (m["psnr"] == PSNR_CAP_DB).all()
    np.testing.assert_allclose(m["ssim"], 1.0, atol=1e-5)
    assert not res.copies_other.any()


def test_a_noise_model_extracts_nothing(data) -> None:
    ds, plan = data
    summary = run_attack(fake("tiny-rar", "noise"), ds, plan, SMALL)
    assert summary["candidates"] == 10 and summary["extracted"] == 0
    assert summary["rates"] == {"planted": 0.0, "ordinary": 0.0, "heldout": 0.0}


def test_noise_model_calibrated_and_by_tokens(data) -> None:
    ds, plan = data
    res = attack_ids(fake("tiny-var", "noise"), ds, plan.planted_ids, heldout=plan.heldout_ids,
                     settings=SMALL.replace(calibrate=True))
    assert not res.extracted.any() and res.calibration is not None
    assert res.calibration.heldout == 10 and res.calibration.allowed == 0
    assert "calibrated on 10 held-out images" in res.decision.threshold_rule
    assert (res.measures["tokens"] < 0.5).all()
    assert res.is_candidate.sum() == 10 and (~res.is_candidate).sum() == 10


def test_class_only_generations_are_flagged_as_copies_of_another_image(data) -> None:
    ds, plan = data
    ids = np.sort(np.concatenate([plan.planted_ids, plan.ordinary_ids]))[:12]
    res = attack_ids(fake("tiny-rar", "class"), ds, ids, settings=AttackSettings(batch_size=32))
    first = {c: int(ids[ds.labels[ids] == c][0]) for c in np.unique(ds.labels[ids])}
    for i, c, ext, cop, oid in zip(res.ids, res.labels, res.extracted, res.copies_other,
                                   res.measures["other_id"]):
        if int(i) == first[int(c)]:
            assert ext and not cop  # the image the model "memorized" is extracted from its own prompt
        else:
            assert cop and not ext and oid == first[int(c)]


def test_features_metric_with_a_given_extractor(data) -> None:
    ds, plan = data

    class Pixels:  # any object with name, dim and __call__ fits
        name, dim = "pixels", 3 * 16 * 16

        def __call__(self, images01: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(images01, size=16).flatten(1) - 0.5

    ids = plan.planted_ids[:4]
    copy = attack_ids(fake("tiny-var", "copy"), ds, ids, settings=SMALL, extractors={"features": Pixels()})
    noise = attack_ids(fake("tiny-var", "noise"), ds, ids, settings=SMALL, extractors={"features": Pixels()})
    assert copy.metric == "features" and copy.extracted.all() and not noise.extracted.any()
    np.testing.assert_allclose(copy.measures["features"], 1.0, atol=1e-5)


def test_default_prefixes_follow_the_paper() -> None:
    var = build("var-d16", device="meta")
    assert default_prefix(var) == 4 and prefix_tokens(var, 4) == 30  # 4 of 10 scales = 30 tokens
    assert default_prefix(build("rar-b", device="meta")) == 30  # 30 of 256 raster tokens
    assert default_prefix(build("tiny-var", device="meta")) == 4  # the paper's first 4 scales: the same 30 tokens
    assert default_prefix(build("tiny-rar", device="meta")) == 15  # 1.875 rows of an 8-wide grid


def test_logit_noise_is_seeded() -> None:
    torch.manual_seed(0)
    iar = build("tiny-rar")
    ds = bundled_mnist()
    x, y = load_views(iar, ds, np.arange(4), 0, 0)
    gt = iar.tokenize(x)
    clean = generate_batch(iar, gt, y, 56)  # 8 generated tokens keep it quick
    a = generate_batch(iar, gt, y, 56, logit_noise=5.0, seed=1, batch_index=3)
    b = generate_batch(iar, gt, y, 56, logit_noise=5.0, seed=1, batch_index=3)
    c = generate_batch(iar, gt, y, 56, logit_noise=5.0, seed=2, batch_index=3)
    assert torch.equal(a.ids_BL, b.ids_BL)
    assert not torch.equal(a.ids_BL, c.ids_BL) and not torch.equal(a.ids_BL, clean.ids_BL)
    assert torch.equal(a.ids_BL[:, :56], gt.ids_BL[:, :56])


def test_attack_ids_refuses_bad_id_lists(data) -> None:
    ds, _ = data
    iar = build("tiny-rar")
    with pytest.raises(UserError, match="empty"):
        attack_ids(iar, ds, [])
    with pytest.raises(UserError, match="not in the dataset"):
        attack_ids(iar, ds, [1, len(ds)])
    with pytest.raises(UserError, match="labels"):
        attack_ids(iar, ds, [1, 2], labels=[0])


class _Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) - x.mean()


def test_torchscript_and_trained_feature_files(data, tmp_path) -> None:
    from iarmem import features

    ds, plan = data
    script = tmp_path / "tiny.pt"
    torch.jit.script(_Tiny()).save(str(script))
    cnn = features.train_feature_extractor(ds, tmp_path / "cnn.pt", image_size=32, steps=2, max_images=200)
    ids = plan.planted_ids[:3]
    for spec, size in ((str(script), 16), (f"torchscript:{script}:24", 224), (f"trained:{cnn}", 224)):
        s = SMALL.replace(features=spec, features_size=size, margin=float("-inf"))  # a 2-step CNN embeds all alike
        res = attack_ids(fake("tiny-var", "copy"), ds, ids, settings=s)
        assert res.metric == "features" and res.extracted.all(), spec
    res = attack_ids(fake("tiny-var", "noise"), ds, ids, settings=SMALL.replace(sscd=str(script), metric="sscd"))
    assert "sscd" in res.measures and not res.extracted.any()


def test_never_trained_images_outside_the_plan_calibrate_and_held_out_stand_out_of_sample(data) -> None:
    from iarmem.attack.decide import calibrate
    from iarmem.data.planting import outside_sample

    ds, plan = data
    cal = outside_sample(plan, ds.labels, 30, seed=0)
    used = np.concatenate([plan.planted_ids, plan.ordinary_ids, plan.heldout_ids])
    assert len(cal) == 30 and not np.isin(cal, used).any() and np.bincount(ds.labels[cal]).tolist() == [3] * 10
    assert np.array_equal(cal, outside_sample(plan, ds.labels, 30, seed=0))
    assert not np.array_equal(cal, outside_sample(plan, ds.labels, 30, seed=1))
    assert len(outside_sample(plan, ds.labels, 10**6, seed=0)) == plan.num_images - len(used)  # capped
    res = attack_ids(fake("tiny-var", "noise"), ds, plan.planted_ids, heldout=plan.heldout_ids, calibration=cal,
                     settings=SMALL.replace(calibrate=True))
    assert res.is_calibration is not None and res.is_calibration.sum() == 30 and not res.is_candidate[
        res.is_calibration].any()
    held = ~res.is_candidate & ~res.is_calibration
    assert res.calibration.heldout == 30 and held.sum() == 10
    assert res.threshold == calibrate(res.similarity[res.is_calibration], 0.01).threshold
    assert res.threshold != calibrate(res.similarity[held], 0.01).threshold  # the held-out rows did not set it
