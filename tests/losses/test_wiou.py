"""Wise-IoU: v1 values against the paper, the detached enclosing size, the v2/v3 module and its running mean."""

import math

import pytest
import torch
from conftest import assert_close, disjoint_pairs, overlapping_pairs
from variant_checks import DISJOINT, centre_offset, descend, enclosing, iou, per_box

import boxloss


def paper_wiou_v1(p, t):
    dx, dy = centre_offset(p, t)
    cw, ch = enclosing(p, t)
    return math.exp((dx * dx + dy * dy) / (cw * cw + ch * ch)) * (1 - iou(p, t))


def test_hand_worked_value_and_paper():
    p, t = torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.]])
    assert boxloss.wiou_loss(p, t).item() == pytest.approx(math.exp(1 / 13) * 2 / 3, rel=1e-6)
    for p, t in (overlapping_pairs(200, seed=25), disjoint_pairs(200, seed=26)):
        assert_close(boxloss.wiou_loss(p, t, reduction="none"), per_box(paper_wiou_v1, p, t))


def test_the_enclosing_size_is_detached():
    # moving the prediction's far edge outwards changes the enclosing box but not the centre distance term's
    # gradient through it: d/dx2 of R·(1 − IoU) with W_g held fixed
    p, t = overlapping_pairs(5, seed=27)
    p.requires_grad_()
    boxloss.wiou_loss(p, t, reduction="sum").backward()
    q = p.detach().clone().requires_grad_()
    cw = torch.maximum(q[:, 2], t[:, 2]) - torch.minimum(q[:, 0], t[:, 0])
    ch = torch.maximum(q[:, 3], t[:, 3]) - torch.minimum(q[:, 1], t[:, 1])
    rho2 = (((q[:, :2] + q[:, 2:]) - (t[:, :2] + t[:, 2:])) / 2).pow(2).sum(-1)
    iou_ = boxloss.box_iou(q, t, aligned=True)
    (torch.exp(rho2 / (cw**2 + ch**2).detach()) * (1 - iou_)).sum().backward()
    assert_close(p.grad, q.grad)


def test_module_v2_v3_focus_with_the_running_mean():
    p, t = overlapping_pairs(30, seed=28)
    for version in (2, 3):
        m = boxloss.WIoULoss(version=version, momentum=0.1)
        v1 = boxloss.wiou_loss(p, t, reduction="none")
        l_iou = 1 - boxloss.box_iou(p, t, aligned=True)
        mean = (0.9 * 1.0 + 0.1 * l_iou.mean()).float().double()  # updated before use, from 1; kept in float32
        beta = l_iou / mean
        factor = beta.sqrt() if version == 2 else beta / (3.0 * 1.9 ** (beta - 3.0))
        assert_close(m(p, t), (v1 * factor).mean())
        assert m.iou_mean.item() == pytest.approx(mean.item(), rel=1e-6)
        m.eval()
        before = m.iou_mean.clone()
        m(p, t)
        assert torch.equal(m.iou_mean, before)           # evaluation does not move the mean
        state = m.state_dict()
        assert "iou_mean" in state
        fresh = boxloss.WIoULoss(version=version)
        fresh.load_state_dict(state)
        assert fresh.iou_mean.item() == pytest.approx(mean.item(), rel=1e-6)
    default = boxloss.WIoULoss()
    assert default.momentum == pytest.approx(1 - 0.05 ** (1 / 7000))
    with pytest.raises(ValueError, match="version"):
        boxloss.WIoULoss(version=4)
    with pytest.raises(ValueError, match="momentum"):
        boxloss.WIoULoss(momentum=0.0)


def test_descends_from_a_disjoint_start():
    assert descend(lambda p, t: boxloss.wiou_loss(p, t), *DISJOINT) > 0.5
    m = boxloss.WIoULoss(version=3)
    assert descend(lambda p, t: m(p, t), *DISJOINT) > 0.5


# ----------------------------------------------------------------------------------------------------------
# the running mean: what enters it, its dtype, its state under DDP
# ----------------------------------------------------------------------------------------------------------
def _pairs32(n=8, seed=40):
    p, t = overlapping_pairs(n, seed=seed)
    return p.float(), t.float()


def test_a_nan_box_poisons_its_call_but_not_the_running_mean():
    # before: one NaN box made the mean NaN, and every later loss NaN, in train and eval, and in the state_dict
    m = boxloss.WIoULoss(version=3, momentum=0.5)
    p, t = _pairs32()
    bad = p.clone()
    bad[3, 0] = math.nan
    out = m(bad, t)
    assert out.isnan()                                     # NaN in, NaN out for that call
    clean = 1 - boxloss.box_iou(p, t, aligned=True)
    keep = torch.ones(8, dtype=torch.bool)
    keep[3] = False
    assert m.iou_mean.item() == pytest.approx(0.5 + 0.5 * clean[keep].mean().item(), rel=1e-6)
    assert m(p, t).isfinite() and m.state_dict()["iou_mean"].isfinite()
    m.eval()
    assert m(p, t).isfinite()


def test_boxes_of_weight_zero_do_not_enter_the_mean():
    p, t = _pairs32()
    weight = torch.tensor([1.0, 0, 2, 0, 1, 1, 0, 3])
    m = boxloss.WIoULoss(version=2, momentum=0.5)
    m(p, t, weight=weight)
    l_iou = 1 - boxloss.box_iou(p, t, aligned=True)
    assert m.iou_mean.item() == pytest.approx(0.5 + 0.5 * l_iou[weight > 0].mean().item(), rel=1e-6)
    before = m.iou_mean.clone()
    m(p, t, weight=torch.zeros(8))                          # nothing to average: unchanged
    assert torch.equal(m.iou_mean, before)
    m(p[:0], t[:0])                                         # empty batch: unchanged
    assert torch.equal(m.iou_mean, before)


@pytest.mark.parametrize("convert", [lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()])
def test_the_mean_stays_float32_and_moves_after_dtype_conversion(convert):
    # before: after .to(torch.bfloat16) the mean never left 1.0 (1 − 4e-4·x rounds back to 1), after .half() it
    # drifted
    ref = boxloss.WIoULoss(version=3)
    m = convert(boxloss.WIoULoss(version=3))
    assert m.iou_mean.dtype == torch.float32
    p, t = _pairs32()
    for _ in range(5):
        ref(p, t)
        m(p, t)
    assert m.iou_mean.item() < 1.0
    assert m.iou_mean.item() == ref.iou_mean.item()
    fresh = boxloss.WIoULoss(version=3)
    fresh.load_state_dict({"iou_mean": torch.tensor(0.25, dtype=torch.bfloat16)})
    assert fresh.iou_mean.dtype == torch.float32 and fresh.iou_mean.item() == 0.25


def _wiou_ddp_worker(rank, world, init_file, out_dir):
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    p, t = _pairs32(12, seed=41)
    shard = slice(0, 4) if rank == 0 else slice(4, 12)      # unequal shards
    synced = boxloss.WIoULoss(version=3, momentum=0.5)
    local = boxloss.WIoULoss(version=3, momentum=0.5, sync=False)
    synced(p[shard], t[shard])
    local(p[shard], t[shard])
    torch.save({"synced": synced.iou_mean, "local": local.iou_mean}, os.path.join(out_dir, f"mean{rank}.pt"))
    dist.destroy_process_group()


def test_under_ddp_the_mean_averages_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_wiou_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"mean{r}.pt") for r in range(2)]
    p, t = _pairs32(12, seed=41)
    whole = boxloss.WIoULoss(version=3, momentum=0.5)
    whole(p, t)
    for r in range(2):
        assert got[r]["synced"].item() == pytest.approx(whole.iou_mean.item(), rel=1e-6)
    assert got[0]["local"].item() != pytest.approx(got[1]["local"].item(), rel=1e-6)  # sync=False: per process
