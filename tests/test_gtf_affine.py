"""GTF-shPLRNN (arXiv 2306.04406): the official code's affine observation model (`model.observation_model=affine`).

Official DurstewitzLab/GTF-shPLRNN (src/models/affine.jl, tf_training/{tfrecur,training,regularization}.jl):
x_t = B z_t + b (B: N x M, kaiming-normal; b = 0 and untrained, `use_bias = false`), forcing signals
zhat = pinv(B) (x - b) computed outside the gradient and applied to all M latents (`partial_forcing = false`),
z~_0 = pinv(B) (x_0 - b) inside the gradient, loss = MSE(B F(z~) + b, x) in observation space, plus
obs_model_regularization * (1 - s_max(B) / (s_min(B) + 1e-8))^2 and lat_model_regularization * L2.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from launch.errors import UserError
from lit_models.dynamics.gtf_plrnn import (
    AffineObservation,
    GTFPLRNNModule,
    ShallowPLRNN,
    gtf_loss,
    gtf_loss_reference,
    regularize_latent,
)


def _affine_case(m: int, n: int, bias: bool, seed: int = 0, hidden: int = 20):
    torch.manual_seed(seed)
    model = ShallowPLRNN(m, hidden, clipped=True).double()
    obs = AffineObservation(n, m, use_bias=bias).double()
    if bias:
        with torch.no_grad():
            obs.b.normal_()
    return model, obs


@pytest.mark.parametrize("m,n,bias", [(5, 5, False), (3, 6, True), (6, 3, True)])
def test_affine_handwritten_bptt_matches_autograd(m, n, bias):
    """gtf_loss (hand-written backward, affine branch) == gtf_loss_reference (autograd) in float64: the loss and every
    gradient (A, W1, W2, h1, h2, B and b, incl. the path through z~_0 = pinv(B) (x_0 - b)) to ~1e-12."""
    model, obs = _affine_case(m, n, bias)
    x = torch.randn(8, 40, n, dtype=torch.float64)
    params = list(model.parameters()) + list(obs.parameters())
    assert len(params) == 5 + (2 if bias else 1)
    for alpha in (0.0, 0.3, 1.0):
        fast, ref = gtf_loss(model, x, alpha, obs=obs), gtf_loss_reference(model, x, alpha, obs=obs)
        assert float(fast) == pytest.approx(float(ref), rel=1e-12)
        for g_fast, g_ref in zip(torch.autograd.grad(fast, params), torch.autograd.grad(ref, params)):
            assert torch.allclose(g_fast, g_ref, rtol=1e-10, atol=1e-13)


def test_affine_gradients_finite_differences():
    """Tiny case (M = 2, N = 3, L = 4, T = 6, with bias): torch.autograd.gradcheck of the hand-written backward
    against central finite differences. The forcing signals pinv(B) (x - b) are constants of the loss (the official
    code computes them before `Flux.gradient`), so dL/dB, dL/db are not total derivatives when alpha > 0: checked
    for every parameter at alpha = 0 (B, b enter through z~_0 = pinv(B) (x_0 - b) and the read-out) and for the
    latent model's parameters at alpha = 0.3 with B, b held fixed."""
    model, obs = _affine_case(2, 3, True, seed=1, hidden=4)
    x = torch.randn(2, 6, 3, dtype=torch.float64)

    class Loss(torch.nn.Module):
        def __init__(self, alpha):
            super().__init__()
            self.model, self.obs, self.alpha = model, obs, alpha

        def forward(self, x):
            return gtf_loss(self.model, x, self.alpha, obs=self.obs)

    for alpha, prefixes in ((0.0, ("model.", "obs.")), (0.3, ("model.",))):
        wrapper = Loss(alpha)
        names = [k for k, _ in wrapper.named_parameters() if k.startswith(prefixes)]
        assert ("obs.B" in names) == (alpha == 0.0) and len(names) == (7 if alpha == 0.0 else 5)
        leaves = [wrapper.get_parameter(k).detach().clone().requires_grad_() for k in names]

        def f(*ps):
            return torch.func.functional_call(wrapper, dict(zip(names, ps)), (x,), strict=False)

        assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_affine_forcing_and_loss_semantics():
    """alpha = 1 is one-step teacher forcing from zhat_t = pinv(B) x_t: the loss is the one-step error in observation
    space; alpha = 0 is the free run from z_0 = pinv(B) x_0 read out through B."""
    model, obs = _affine_case(4, 4, False)
    x = torch.randn(3, 15, 4, dtype=torch.float64)
    with torch.no_grad():
        zhat = x @ torch.linalg.pinv(obs.B).T
        one_step = (obs(model(zhat[:, :-1])) - x[:, 1:]).pow(2).mean()
        free = obs(model.generate(zhat[:, 0], 15))
        assert float(gtf_loss(model, x, 1.0, obs=obs)) == pytest.approx(float(one_step), rel=1e-12)
        assert float(gtf_loss(model, x, 0.0, obs=obs)) == pytest.approx(float((free[:, 1:] - x[:, 1:]).pow(2).mean()),
                                                                        rel=1e-10)


def test_zhat_inversion_recovers_latents():
    """With B well conditioned (N >= M), pinv(B) (B z + b - b) = z; the initial std of B is sqrt(2 / M)."""
    torch.manual_seed(0)
    for n, m in ((5, 5), (64, 16)):
        obs = AffineObservation(n, m, use_bias=True).double()
        with torch.no_grad():
            obs.b.normal_()
        assert torch.linalg.cond(obs.B) < 1e3
        z = torch.randn(7, 11, m, dtype=torch.float64)
        torch.testing.assert_close(obs.inverse(obs(z)), z, rtol=1e-9, atol=1e-9)
    big = AffineObservation(400, 100)
    assert float(big.B.std()) == pytest.approx(math.sqrt(2 / 100), rel=0.05)
    assert float(big.b.abs().sum()) == 0 and [k for k, _ in big.named_parameters()] == ["B"]  # use_bias = false


def test_regularizers_match_official_formulas():
    torch.manual_seed(0)
    obs = AffineObservation(5, 5).double()
    s = torch.linalg.svdvals(obs.B)
    assert float(obs.regularize(1e-7)) == pytest.approx(1e-7 * (1 - float(s[0]) / (float(s[-1]) + 1e-8)) ** 2)
    with torch.no_grad():
        obs.B.copy_(torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0] * 3.0)  # cond = 1
    assert float(obs.regularize(1.0)) == pytest.approx(0.0, abs=1e-12)
    model = ShallowPLRNN(3, 7).double()
    expected = ((1 - model.A) ** 2).sum() + (model.W1**2).sum() + (model.W2**2).sum() + (model.h1**2).sum() + (
        model.h2**2).sum()
    assert float(regularize_latent(model, 1e-4)) == pytest.approx(1e-4 * float(expected), rel=1e-12)


def test_module_affine_paths_and_bad_config():
    """The module's affine path: loss + regularization terms, alpha* on pinv(B) x, the free run read out through
    B z + b (so D_stsp / D_H see observations), and clear errors for bad settings."""
    torch.manual_seed(0)
    module = GTFPLRNNModule(latent_dim=4, hidden_dim=16, obs_dim=6, observation_model="affine",
                            obs_model_regularization=1e-3, lat_model_regularization=1e-4, alpha_method="constant",
                            alpha=0.3)
    assert module.obs is not None and module.obs.B.shape == (6, 4) and module.z0_rest is None
    x = torch.randn(4, 30, 6)
    reg = module.regularization_loss()
    expected = module.obs.regularize(1e-3) + regularize_latent(module.model, 1e-4)
    assert float(reg) == pytest.approx(float(expected), rel=1e-6)
    loss = module.training_step(x)
    assert float(loss) == pytest.approx(float(gtf_loss(module.model, x, 0.3, obs=module.obs) + expected), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    torch.testing.assert_close(module.latent_states(x), x @ torch.linalg.pinv(module.obs.B).T)
    gen = module.free_run(x[:1])
    with torch.no_grad():
        z = module.model.generate(module.obs.inverse(x[:1, :1])[:, 0], 30)[0]
    torch.testing.assert_close(gen, z @ module.obs.B.T)
    assert gen.shape == (30, 6)
    # identity model: no B, the existing defaults
    ident = GTFPLRNNModule(obs_dim=3)
    assert ident.obs is None and ident.hparams.observation_model == "identity" and ident.regularization_loss() is None
    with pytest.raises(ValueError, match="observation_model"):
        GTFPLRNNModule(obs_dim=3, observation_model="linear")
    with pytest.raises(ValueError, match="affine"):
        GTFPLRNNModule(obs_dim=3, obs_model_regularization=1e-7)
    with pytest.raises(UserError, match="model.latent_dim=2 is below the data.s 3 dimensions"):
        GTFPLRNNModule(latent_dim=2, obs_dim=3)  # identity needs M >= N; affine does not
    GTFPLRNNModule(latent_dim=2, obs_dim=3, observation_model="affine")


def _write_npy(folder, name: str, n: int, t_train: int = 1200, t_test: int = 300) -> None:
    """The official T x N float32 .npy train / test files under their repository paths (GTF_FILES)."""
    from datamodules.dynamics import GTF_FILES

    rng = np.random.default_rng(0)
    t = np.arange(t_train + t_test)[:, None] * 0.05
    x = (np.sin(t * (1 + np.arange(n)) / n * 3) + 0.05 * rng.standard_normal((t_train + t_test, n))).astype(np.float32)
    for rel, part in zip(GTF_FILES[name][:2], (x[:t_train], x[t_train:])):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / rel, part)


def test_ecg_variant_affine_contract(tmp_path):
    """The ECG variant (official shPLRNN_GTF.jl: affine obs., obs_model_regularization 1e-7, alpha 0.3, M = 5,
    L = 250) trains a few steps on a fixture in the real .npy format; every parameter (incl. B) gets a gradient."""
    from launch import config as zconfig
    from tests.papers.contract import fast_run

    cfg = zconfig.compose(["experiment=gtf_plrnn/ecg", "logger=none"])
    m = cfg.model
    assert (m.observation_model, m.obs_bias, m.obs_model_regularization, m.lat_model_regularization) == (
        "affine", False, 1e-7, 0.0)
    assert (m.latent_dim, m.hidden_dim, m.alpha_method, m.alpha) == (5, 250, "constant", 0.3)
    _write_npy(tmp_path, "ECG", 5)
    run = fast_run("gtf_plrnn/ecg", f"data.data_dir={tmp_path}", steps=2)
    assert run.coverage.losses and all(math.isfinite(v) for v in run.coverage.losses)
    assert not run.coverage.names - run.coverage.touched
    assert any("obs.B" in k for k in run.coverage.names)
    assert run.model.obs.B.shape == (5, 5)
    assert math.isfinite(run.metrics["test/d_stsp"]) and math.isfinite(run.metrics["test/d_h"])


def test_eeg_variant_reads_its_files(tmp_path):
    """EEG variant (official paper_experiments/EEG/Table1/shPLRNN_GTF.jl): M = 16, L = 512, affine (N x 16),
    alpha 0.1, T = 50, lat reg 1e-4, obs reg 1e-6; reads EEG/EEG_{train,test}.npy (not in the official repository:
    data_dir only) in the official T x N .npy format, N from the file; one training step and the free run (N >= 6:
    Gaussian-mixture D_stsp)."""
    from launch import config as zconfig
    from launch import train

    cfg = zconfig.compose(["experiment=gtf_plrnn/eeg", "logger=none"])
    m, d = cfg.model, cfg.data
    assert (m.latent_dim, m.hidden_dim, m.observation_model, m.alpha_method, m.alpha) == (16, 512, "affine",
                                                                                         "constant", 0.1)
    assert (m.obs_model_regularization, m.lat_model_regularization, d.seq_len, d.batch_size) == (1e-6, 1e-4, 50, 16)
    assert cfg.trainer.max_epochs == 5000 and d.steps_per_epoch == 50 and d.name == "EEG"
    dm, _ = train.instantiate(cfg)
    with pytest.raises(UserError, match="data_dir"):
        dm.setup()
    _write_npy(tmp_path, "EEG", 8)
    cfg = zconfig.compose(["experiment=gtf_plrnn/eeg", "logger=none", f"data.data_dir={tmp_path}",
                           "model.hidden_dim=32"])
    dm, module = train.instantiate(cfg)
    dm.setup("fit")
    assert dm.dim == 8
    module._build_obs(dm.dim)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (16, 51, 8)  # official sample_sequence: sequence_length + 1 points (seq_len_plus_one)
    loss = module.training_step(batch)
    loss.backward()
    assert math.isfinite(float(loss)) and module.obs.B.grad is not None and module.obs.B.shape == (8, 16)
    (item,) = list(dm.test_dataloader())
    module._evaluate(item, "test")
    truth, gen = module._last_eval
    assert gen.shape == truth.shape == (300, 8)


def test_affine_gtf_lowers_loss_on_lorenz():
    """Learning sanity (not a claim): affine GTF (M = N = 3, alpha 0.3, obs. reg 1e-7) on a short noise-free Lorenz
    run: the mean training loss of the last 20 of 150 RAdam (lr 1e-2) steps is below a quarter of the first 20's
    (measured 0.578 -> 0.052; the identity model under the same settings: 0.485 -> 0.050)."""
    torch.set_num_threads(1)
    from datamodules.dynamics import DystsDataModule

    dm = DystsDataModule(name="Lorenz", n_points=3000, train_points=2000, seq_len=100, batch_size=8,
                         steps_per_epoch=150, noise=0.0)
    dm.setup("fit")
    torch.manual_seed(0)
    module = GTFPLRNNModule(latent_dim=3, hidden_dim=30, obs_dim=3, observation_model="affine",
                            obs_model_regularization=1e-7, alpha_method="constant", alpha=0.3)
    opt = torch.optim.RAdam(module.parameters(), lr=1e-2)
    losses = []
    for batch in dm.train_dataloader():
        loss = module.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert np.all(np.isfinite(losses)) and last < 0.25 * first, (first, last)


@pytest.mark.parametrize("variant, name, dim, estimator, regs", [
    ("ecg_agtf", "ECG", 5, "product_upper_bound", (1e-6, 1e-5)),
    ("eeg_agtf", "EEG", 8, "arithmetic_mean", (1e-6, 1e-4))])
def test_table1_agtf_variants(tmp_path, variant, name, dim, estimator, regs):
    """Table 1's aGTF rows (official paper_experiments/{ECG,EEG}/Table1/shPLRNN_aGTF.jl): adaptive alpha from 1.0,
    the script's estimator, every 5 batches, decay 0.999, its regularisations; alpha moves during training."""
    from launch import config as zconfig
    from tests.papers.contract import fast_run

    m = zconfig.compose([f"experiment=gtf_plrnn/{variant}", "logger=none"]).model
    assert (m.alpha_method, m.alpha, m.alpha_estimator, m.alpha_update_every, m.alpha_decay) == (
        "adaptive", 1.0, estimator, 5, 0.999)
    assert (m.obs_model_regularization, m.lat_model_regularization) == regs
    _write_npy(tmp_path, name, dim)
    run = fast_run(f"gtf_plrnn/{variant}", f"data.data_dir={tmp_path}", "model.hidden_dim=16", steps=5)
    assert all(math.isfinite(v) for v in run.coverage.losses)
    assert run.model.alpha < 1.0  # one update after 5 batches: alpha* < 1 (or the decay)
