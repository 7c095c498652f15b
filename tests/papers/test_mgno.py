"""MgNO (arXiv 2310.19809): the paper contract's fast test, unit checks of the V-cycle (level spec, sizes, padding
mode = boundary condition, bias field, H1 loss) and the card's claims (multigrid vs single level, padding)."""
from __future__ import annotations

import pytest
import torch

from launch.check import run_claim
from launch.errors import UserError
from lit_models.pde.mgno import MgConv, MgNO, MgNOModule, boundary_ring, parse_levels, relative_h1
from tests.papers.contract import fast_run

SMALL = ["data.resolution=16", "data.n_train=8", "data.n_test=4", "data.batch_size=4", "data.eval_batch_size=4",
         "model.levels=[10,10,10]", "model.num_channel_u=4"]


def test_fast_contract(tmp_path):
    run = fast_run("mgno", *SMALL, f"data.cache_dir={tmp_path}")
    run.assert_contract()
    for key in ("test/rel_l2", "test/rel_h1", "test/boundary_rel_l2"):
        assert key in run.metrics, sorted(run.metrics)
    assert run.model(torch.zeros(2, 1, 16, 16, dtype=run.model.dtype)).shape == (2, 1, 16, 16)
    figs = run.model.figures()
    assert set(figs) == {"fields"}
    assert figs["fields"]._suptitle.get_text() == "MgNO, test set, its first sample"  # figures audit, stop 42
    import matplotlib.pyplot as plt

    plt.close(figs["fields"])


def test_output_normalizer_decodes_with_the_training_statistics(tmp_path):
    """model.output_normalizer (official --normalizer) with data.normalizer_type=PGN: the output is decoded as
    net(x) x std + mean with the training solutions' point-wise statistics (copied at fit start, kept in checkpoints),
    the loss compares raw solutions; without the data's statistics it is a one-line error."""
    run = fast_run("mgno", *SMALL, f"data.cache_dir={tmp_path}", "data.normalizer_type=PGN",
                   "model.output_normalizer=true")
    run.assert_contract()
    model, dm = run.model, run.datamodule
    mean, std = dm.output_stats
    torch.testing.assert_close(model.y_mean, mean.to(model.y_mean))
    torch.testing.assert_close(model.y_std, std.to(model.y_std))
    x = dm.tensors["x_test"][:2].to(model.dtype)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(x) * std.to(x) + mean.to(x))
    fresh = MgNOModule(**{k: v for k, v in model.hparams.items() if k != "optimizer"})
    fresh.load_state_dict(model.state_dict())  # the statistics travel with the weights
    torch.testing.assert_close(fresh.y_mean, model.y_mean.float())
    bare = MgNOModule(resolution=16, levels=[[1, 0]] * 3, num_channel_u=4, output_normalizer=True)
    bare._trainer = type("T", (), {"datamodule": type("D", (), {"output_stats": None})()})()
    with pytest.raises(UserError, match="normalizer_type"):
        bare.on_fit_start()
    assert "y_mean" not in MgNOModule(resolution=16, levels=[[1, 0]] * 3).state_dict()


def test_smooth_darcy_prolongations_are_the_official_mgno_dc_smooth():
    """prolongation_kernel="auto" (official MgConv_DC_smooth, smooth Darcy at 211 x 211): R^T kernels 3, 4, 3, 3, 4
    onto 211, 106, 53, 27, 14 nodes (3 x 3 where the finer level is odd, 4 x 4 where even), no cropping; a 3 x 3 R^T
    equals the official ConvTranspose2d(3, stride 2, padding 1) under zero padding; the official parameter count
    (ours with 4 x 4 everywhere carries 5 layers x 3 odd levels x 24^2 x 7 = 60,480 more weights)."""
    from lit_models.pde.mgno import prolongation_kernels

    assert prolongation_kernels(6, 211, "auto") == [3, 4, 3, 3, 4] and prolongation_kernels(6, 64) == [4] * 5
    assert prolongation_kernels(4, 64, "auto") == [4, 4, 4]
    kw = dict(num_layer=5, num_channel_u=24, levels=["10"] * 5 + ["20"], bias_field=False, resolution=211)
    smooth, dc = MgNO(prolongation_kernel="auto", **kw), MgNO(**kw)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(dc) - count(smooth) == 5 * 3 * 24 ** 2 * 7 and count(smooth) == 678_093
    conv = smooth.convs[0]
    assert [tuple(p.weight.shape[-2:]) for p in conv.prolong] == [(3, 3), (4, 4), (3, 3), (3, 3), (4, 4)]
    with torch.no_grad():
        out = smooth(torch.randn(1, 1, 211, 211))
        assert out.shape == (1, 1, 211, 211)
        coarse = torch.randn(2, 24, 106, 106)
        official = torch.nn.ConvTranspose2d(24, 24, 3, stride=2, padding=1, bias=False)
        official.weight.copy_(conv.prolong[0].weight)
        ours = conv.prolong[0](torch.nn.functional.pad(coarse, (1, 1, 1, 1)))
        assert ours.shape[-1] == 211
        torch.testing.assert_close(ours, official(coarse))
    with pytest.raises(ValueError, match="prolongation_kernel"):
        MgNO(prolongation_kernel=5, resolution=16, levels=["10"] * 3)
    from launch import config as zconfig

    assert zconfig.compose(["experiment=mgno/darcy_smooth"]).model.prolongation_kernel == "auto"


def test_navier_stokes_prolongation_pads_with_zeros_as_the_official_mgno_ns():
    """Official MgNO_NS pads every convolution circularly but its R^T (MgConv: ConvTranspose2d(4, stride 2,
    padding 1) on the unpadded coarse grid) with zeros: `prolongation_padding="zeros"` gives exactly that, and the
    NS paper-scale config uses it; the default ("same") pads R^T circularly too, which differs on the edge rows."""
    from launch import config as zconfig
    from lit_models.pde.mgno import MgConv

    levels = [[1, 0], [1, 0], [1, 0]]
    official_padding = MgConv(levels, 8, 1, padding_mode="circular", prolongation_padding="zeros")
    periodic = MgConv(levels, 8, 1, padding_mode="circular")
    periodic.load_state_dict(official_padding.state_dict())
    official = torch.nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, bias=False)
    coarse = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        official.weight.copy_(official_padding.prolong[0].weight)
        torch.testing.assert_close(official_padding.prolongate(0, coarse, (16, 16)), official(coarse))
        assert not torch.allclose(periodic.prolongate(0, coarse, (16, 16)), official(coarse))
    with pytest.raises(ValueError, match="prolongation_padding"):
        MgConv(levels, 8, 1, prolongation_padding="circular")
    assert zconfig.compose(["experiment=mgno/navier_stokes"]).model.prolongation_padding == "zeros"
    assert zconfig.compose(["experiment=mgno"]).model.prolongation_padding == "same"


def test_coarsest_level_has_no_post_smoothing():
    """The official forward never runs the coarsest level's post-smoother (built, not called): a level spec asking for
    one is an error rather than a silent no-op; the other levels' post-smoothings run (the pipe variant's "11")."""
    from lit_models.pde.mgno import MgConv

    with pytest.raises(ValueError, match="coarsest level"):
        MgConv(parse_levels(["10", "21"]), c_u=2, c_f=2)
    conv = MgConv(parse_levels(["11", "20"]), c_u=2, c_f=2)
    assert len(conv.post[0]) == 1 and len(conv.post[-1]) == 0
    f = torch.randn(1, 2, 9, 9)
    assert conv(f).shape == f.shape


def test_level_spec_tokens_are_pre_post_pairs():
    assert parse_levels(["10", "10", "20"]) == [[1, 0], [1, 0], [2, 0]]
    assert parse_levels([10, 21]) == [[1, 0], [2, 1]]  # the integer 10 is "1 pre, 0 post", not ten
    assert parse_levels("10 10 10 10 10 20") == [[1, 0]] * 5 + [[2, 0]]
    assert parse_levels([[1, 0], [0, 2]]) == [[1, 0], [0, 2]]
    for bad in (["1"], ["100"], [], ["01"], [[1, -1]]):
        with pytest.raises(ValueError):
            parse_levels(bad)


def test_vcycle_structure_and_odd_sizes():
    torch.manual_seed(0)
    mg = MgConv(parse_levels("10 11 20"), c_u=3, c_f=2)
    assert len(mg.restrict) == 2 and len(mg.prolong) == 2
    assert mg.pre[0][0].A is None  # the cycle starts with u = S(f)
    assert len(mg.pre[2]) == 2 and len(mg.post[1]) == 1
    for size in (16, 21, 211):  # grids not divisible by 2^(levels-1) are cropped after prolongation
        assert mg(torch.randn(1, 2, size, size)).shape == (1, 3, size, size)


def test_multigrid_receptive_field_spans_the_grid_single_level_does_not():
    """A perturbation at one corner changes the output at the far corner only with several levels."""
    torch.manual_seed(0)
    for levels, reaches in ((["10"] * 5, True), (["10"], False)):
        net = MgNO(1, 1, num_layer=3, num_channel_u=4, levels=levels, resolution=32, bias_field=False)
        x = torch.randn(1, 1, 32, 32)
        x2 = x.clone()
        x2[..., 0, 0] += 1.0
        with torch.no_grad():
            diff = (net(x2) - net(x)).abs()[0, 0, -1, -1]
        assert (float(diff) > 0) == reaches


def test_padding_mode_is_the_boundary_condition():
    """Every conv uses the padding mode: circular MgNO (without bias field) commutes with periodic shifts,
    zero padding does not."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16)
    for mode, equivariant in (("circular", True), ("zeros", False)):
        net = MgNO(1, 1, 2, 4, ["10", "10", "10"], padding_mode=mode, resolution=16, bias_field=False)
        with torch.no_grad():
            a, b = net(torch.roll(x, (4, 4), (-2, -1))), torch.roll(net(x), (4, 4), (-2, -1))
        assert torch.allclose(a, b, atol=1e-5) == equivariant
    convs = [m for m in MgNO(1, 1, 2, 4, ["10", "10"], padding_mode="circular", resolution=16).modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(c.padding_mode == "circular" for c in convs)


def test_reflect_padding_needs_a_coarsest_grid_of_two_points():
    """Reflect padding has nothing to reflect on a 1 x 1 grid (torch raised "Padding size should be less than ..." in
    the first forward): 5 levels on 16 points (16, 8, 4, 2, 1) are a one-line error at construction; 17 points
    (coarsest 2 x 2), 4 levels on 16, and the other padding modes on 16 x 16 with 5 levels run."""
    levels = ["10"] * 5
    with pytest.raises(ValueError, match="padding_mode=reflect needs a coarsest grid of at least 2 x 2"):
        MgNOModule(resolution=16, levels=levels, padding_mode="reflect", num_layer=1, num_channel_u=2)
    for resolution, lv, mode in ((17, levels, "reflect"), (16, levels[:4], "reflect"), (16, levels, "zeros"),
                                 (16, levels, "circular"), (16, levels, "replicate")):
        net = MgNO(1, 1, 1, 2, lv, padding_mode=mode, resolution=resolution)
        with torch.no_grad():
            assert net(torch.randn(1, 1, resolution, resolution)).shape == (1, 1, resolution, resolution)


def test_restriction_residual_has_the_smoothers_bias_as_official():
    """use_res=True with conv_bias=True: the residual's A of each restriction has a bias, as in the official MgConv /
    MgConv_DC (A built with bias=bias; Pi and R with bias=False); without conv_bias none of them has one."""
    for bias in (True, False):
        conv = MgConv(parse_levels(["10", "10", "10"]), c_u=3, c_f=2, use_res=True, conv_bias=bias)
        for r in conv.restrict:
            assert (r.A.bias is not None) == bias and r.Pi.bias is None and r.R.bias is None
            assert r.A.bias is None or r.A.bias.shape == (2,)
        assert conv(torch.randn(1, 2, 16, 16)).shape == (1, 3, 16, 16)


def test_bias_is_a_field_tied_to_the_resolution():
    net = MgNO(1, 1, 2, 4, ["10", "10"], resolution=16)
    assert net.biases[0].shape == (4, 16, 16)
    with pytest.raises(UserError, match="resolution"):
        net(torch.zeros(1, 1, 32, 32))


def test_relative_h1_weights_derivatives():
    x = torch.linspace(0, 1, 32)
    base = torch.sin(torch.pi * x)[:, None] * torch.sin(torch.pi * x)[None]
    y = base[None, None]
    low = y + 0.01 * torch.cos(2 * torch.pi * x)[None, None, :, None]
    high = y + 0.01 * torch.cos(24 * torch.pi * x)[None, None, :, None]
    assert float(relative_h1(y, y)) == 0
    assert float(relative_h1(high, y)) > 3 * float(relative_h1(low, y))


def test_default_loss_is_the_official_truncated_h1_summed_over_the_batch():
    """Paper-scale default loss = utilities3.HsLoss(d=2, p=2, k=1, size_average=False, truncation=True): per sample
    ||(F(pred) - F(y)) w|| / ||F(y) w|| with w = sqrt(1 + kx^2 + ky^2), each |k| >= 20 set to 0, summed over the
    batch; the CPU experiments' "mean" / untruncated variant differs by the batch factor and the weights."""
    torch.manual_seed(0)
    n, res = 4, 48
    y, pred = torch.randn(n, 1, res, res), torch.randn(n, 1, res, res)
    k = torch.cat([torch.arange(0, res // 2), torch.arange(-res // 2, 0)]).abs().float()
    kt = k * (k < 20)
    w = torch.sqrt(1 + kt[:, None] ** 2 + kt[None, :] ** 2)
    fp, fy = torch.fft.fft2(pred[:, 0], norm="ortho") * w, torch.fft.fft2(y[:, 0], norm="ortho") * w
    official = ((fp - fy).reshape(n, -1).norm(dim=1) / fy.reshape(n, -1).norm(dim=1)).sum()
    module = MgNOModule(resolution=res, num_layer=1, num_channel_u=4, levels=["10"])
    assert (module.hparams.loss_reduction, module.hparams.h1_truncation, module.hparams.pct_start) == ("sum", 20, 0.2)
    assert float(module.loss_fn(pred, y)) == pytest.approx(float(official), rel=1e-5)
    mean = MgNOModule(resolution=res, num_layer=1, num_channel_u=4, levels=["10"], loss_reduction="mean")
    assert float(mean.loss_fn(pred, y)) == pytest.approx(float(official) / n, rel=1e-5)
    assert float(relative_h1(pred, y).mean()) != pytest.approx(float(official) / n, rel=1e-3)  # untruncated differs
    with pytest.raises(ValueError, match="loss_reduction"):
        MgNOModule(loss_reduction="max")


def test_scheduler_interval_epoch_is_the_official_per_epoch_one_cycle(tmp_path):
    """model.scheduler_interval=epoch (paper-scale variants): the official getOptimizerScheduler builds
    OneCycleLR(steps_per_epoch=1, epochs=E) and steps it once after each epoch, so every batch of epoch e runs at the
    schedule's value e of E; "step" (default) spreads the same curve over all batches; epoch needs max_epochs."""
    from types import SimpleNamespace

    from launch.errors import UserError

    epochs, batches = 10, 3
    module = MgNOModule(resolution=16, levels=[[1, 0]] * 3, num_channel_u=4, scheduler_interval="epoch")
    module._trainer = SimpleNamespace(max_epochs=epochs, estimated_stepping_batches=epochs * batches)
    conf = module.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "epoch"
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    ref_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=5e-4, div_factor=2.0, final_div_factor=100.0,
                                              pct_start=0.2, steps_per_epoch=1, epochs=epochs)
    for _ in range(epochs):  # Lightning steps an epoch-interval scheduler after each epoch, as the official loop
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        sched.step()
        ref.step()
    per_step = MgNOModule(resolution=16, levels=[[1, 0]] * 3, num_channel_u=4)
    per_step._trainer = module._trainer
    conf = per_step.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step" and conf["lr_scheduler"]["scheduler"].total_steps == 30
    module._trainer = SimpleNamespace(max_epochs=-1, estimated_stepping_batches=100)
    with pytest.raises(UserError, match="max_epochs"):
        module.configure_optimizers()
    with pytest.raises(ValueError, match="scheduler_interval"):
        MgNOModule(scheduler_interval="batch")
    module._trainer = SimpleNamespace(max_epochs=5, estimated_stepping_batches=15)  # 0.2 x 5 = one warm-up epoch
    with pytest.raises(UserError, match="pct_start"):
        module.configure_optimizers()
    run = fast_run("mgno", *SMALL, f"data.cache_dir={tmp_path}", "model.scheduler_interval=epoch",
                   "trainer.max_epochs=2", "trainer.max_steps=-1")
    run.assert_contract()


def test_bad_config_raises():
    with pytest.raises(ValueError, match="padding_mode"):
        MgNOModule(padding_mode="mirror")
    with pytest.raises(ValueError, match="loss"):
        MgNOModule(loss="h2")
    with pytest.raises(ValueError, match="levels need"):
        MgNOModule(levels=["10"] * 6, resolution=16)


def test_boundary_ring():
    m = boundary_ring((32, 32))
    assert m[0].all() and m[:, -1].all() and not m[2:-2, 2:-2].any() and m[1, 5] == 1


CLAIM_NOTE = """Measured once (card 60 s gate config: 32 x 32, 4 levels [1, 0], 3 layers, c_u 12, 400 steps, lr 2e-3,
batch 8, 1 thread on a heavily shared 2-core machine, wall times inflated ~3-4x)."""


@pytest.mark.slow
def test_claim_multigrid_matters_and_fails_with_single_level():
    """Card check 1 at the card's 60 s gate (32 x 32, 4 levels): MgNO-lite test rel. L2 <= 0.09 and <= 0.5 x the
    single-level network (the card: calibrate both numbers at this size, the >= 2x gap is the criterion; its 0.06
    is the 64 x 64 reference run's). Measured at seeds 0 / 1 / 2 / 3 / 4: 4 levels 0.0560 / 0.0545 / 0.0616 /
    0.0475 / 0.0491 (96k params), single level 0.1313 / 0.1263 / 0.1285 / 0.1257 / 0.1222 (40k params): ratio
    0.38-0.48; 0.09 lies between the worst MgNO seed and the best single-level one (the earlier 0.06, from seed 0
    alone, failed seed 2). The swap (single level for MgNO) must fail."""
    torch.set_num_threads(1)
    result = run_claim("mgno", "multigrid_matters")
    assert result.passed, result.report()
    swapped = run_claim("mgno", "multigrid_matters", swap_baseline=True)
    assert not swapped.passed, swapped.report()


@pytest.mark.slow
def test_claim_padding_is_the_boundary_condition_and_fails_when_swapped():
    """Card check 2 (calibrate once): circular padding on Dirichlet data raises the test rel. L2 >= 1.1 x zero padding.
    Measured: seed 0 zeros 0.0560, circular 0.0760 (1.36x; boundary-ring rel. L2 0.144 vs 0.173); seed 1 zeros 0.0545,
    circular 0.0669 (1.23x). Threshold 1.1 sits between 1.0 (the swap: both runs circular) and the smaller of the two.
    (With the official zero-padded transposed conv as R^T, circular was only 1.06x worse: 0.0592 vs 0.0560.)
    Over seeds 0-4 (`zoo check mgno --seeds 0-4`): 1.36 / 1.23 / 1.04 / 1.40 / 1.46, so seed 2 misses (its
    zero-padded model is the worst of the five, 0.0616); the claim carries that as a known gap and this test xfails
    with the report if the configured seed misses. The swap (both runs circular) must fail."""
    torch.set_num_threads(1)
    swapped = run_claim("mgno", "padding_is_the_boundary_condition", swap_baseline=True)
    assert not swapped.passed, swapped.report()
    result = run_claim("mgno", "padding_is_the_boundary_condition")
    if not result.passed:
        assert result.verdict == "KNOWN GAP", result.report()  # finite values and the claim's floors met
        pytest.xfail(result.report())
