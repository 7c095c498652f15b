"""PROSE (arXiv 2309.16816): the paper contract's fast test, the card's deterministic tokeniser round trip, the
decoder masking pitfalls (data decoder not causal, symbol decoder causal), and the card's fusion claim."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from launch.check import run_claim
from lit_models.dynamics.prose import PROSE
from lit_models.dynamics.prose_symbolic import (FAMILIES, SymbolicTokenizer, addition_pool, corrupt, corrupt_one_term,
                                                format_expression, random_expression)
from tests.papers.contract import claims_pass_or_xfail, fast_run

SMALL = ["data.num_train=256", "data.num_val=32", "data.num_test=32", "data.eval_batch_size=32",
         "model.max_gen_len=12"]


def test_fast_contract_data_only_is_the_official_no_text_model():
    """`model.text_input=false` = the official --no_text (build_modules, enc_dec_step): no text encoder, fusion or
    symbol decoder, the data decoder reads the data encoder's output, and the loss is the data loss alone."""
    run = fast_run("prose", *SMALL, "model.text_input=false")
    run.assert_contract()
    net = run.model.model
    assert net.text_encoder is None and net.fusion is None and net.symbol_decoder is None
    assert "test/rel_l2" in run.metrics and "test/valid_frac" not in run.metrics, sorted(run.metrics)
    batch = next(iter(run.datamodule.test_dataloader()))
    batch = {k: v.to(run.model.dtype) if v.is_floating_point() else v for k, v in batch.items()}
    _, ce, _, logits, _, data = run.model._losses(batch)
    assert logits is None and float(ce) == 0.0
    assert float(run.model._trained_loss(data, ce)) == pytest.approx(float(data))  # no 6.0 weight, no CE
    import matplotlib.pyplot as plt

    fig = run.model.figures()["trajectory"]
    assert fig.axes[0].get_title(loc="left").startswith("true: dx_0/dt = ")  # the true expression, no decoder
    plt.close(fig)


@pytest.mark.parametrize("text_input", [True])
def test_fast_contract(text_input):
    run = fast_run("prose", *SMALL, f"model.text_input={str(text_input).lower()}")
    run.assert_contract()
    for key in ("test/rel_l2", "test/mse", "test/valid_frac", "test/skeleton_acc", "test/symbol_token_acc"):
        assert key in run.metrics, sorted(run.metrics)
    # text_rel_l2 is logged only when some decode evaluates (not after 3 steps): decode the true ids instead
    model, batch = run.model, next(iter(run.datamodule.test_dataloader()))
    batch = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in batch.items()}  # as the trainer (64-true)
    model.model.generate = lambda *args: batch["text_out"][:, 1:]
    model.text_rel_l2["test"].reset()
    model.log = lambda *args, **kwargs: None  # outside a trainer
    with torch.inference_mode():  # the metric states are inference tensors after trainer.test
        model._evaluate(batch, "test", 0)
    assert model.text_rel_l2["test"].update_count > 0
    assert model.text_rel_l2["test"].compute().item() == pytest.approx(0.0, abs=1e-9)
    assert (run.model.model.text_encoder is not None) == text_input
    figs = run.model.figures()  # of the sample just evaluated, decoded as its true expression
    assert set(figs) == {"trajectory"}
    fig = figs["trajectory"]
    true = model.tokenizer.decode(batch["text_out"][0])
    for ax, component in zip(fig.axes, format_expression(true).split("; "), strict=True):  # true beside decoded
        assert f"true: {component}\ngenerated: {component}" in ax.get_title(loc="left"), ax.get_title(loc="left")
    assert "test sample 0" in fig._suptitle.get_text() and "rel L2" in fig._suptitle.get_text()
    fig.canvas.draw()  # the legend sits beside the x_0 panel, not over its input points
    legend, panel = fig.axes[0].get_legend(), fig.axes[0]
    assert legend.get_window_extent().x0 >= panel.get_window_extent().x1
    import matplotlib.pyplot as plt

    plt.close(figs["trajectory"])
    # an invalid generated sequence: said so, its raw tokens wrapped between tokens, not cut inside one
    tokens = ["add", "mul", "x_0", "+", "1.2345", "10^", "-3", "sin", "x_1"] * 12
    model._sample.update(expr=None, generated=" ".join(tokens))
    fig = model.figures()["trajectory"]
    title = fig.axes[0].get_title(loc="left")
    assert "invalid expression: add mul" in title, title
    shown = title.split("invalid expression:")[1].split()
    assert shown[-1] == "..." and set(shown[:-1]) <= set(tokens) and len(shown) > 30, shown
    plt.close(fig)


def test_round_trip_probe_checks_the_precision_not_only_its_own_rounding():
    """The claim's probe compares the decoded constants with the original ones (3 significant digits), not only with
    the tokenizer's own rounding: a tokenizer that keeps 2 digits fails it (measured 0.054), 3 or 4 pass (1.000)."""
    from lit_models.dynamics.card_probes import tokenizer_round_trip

    assert tokenizer_round_trip(200)["exact_fraction"] == 1.0
    assert tokenizer_round_trip(200, float_precision=4)["exact_fraction"] == 1.0
    assert tokenizer_round_trip(200, float_precision=2)["exact_fraction"] < 0.5


def test_tokenizer_round_trip_1000_random_expressions():
    """Card check 3: encode -> decode of 1,000 random expressions with constants reproduces them exactly (floats
    rounded to the configured 3 significant digits); skeletons round-trip too."""
    tok = SymbolicTokenizer(max_dim=3, float_precision=3)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        expr = random_expression(rng)
        ids = tok.encode(expr)
        assert tok.decode(ids) == tok.round_expression(expr)
        # rounding is to 3 significant digits
        for comp, rcomp in zip(expr, tok.decode(ids)):
            for (c, _), (rc, _) in zip(comp, rcomp):
                assert abs(rc - c) <= 5e-3 * abs(c) + 1e-12
        sk = tok.decode(tok.encode(expr, skeleton=True))
        assert tok.skeleton(sk) == tok.skeleton(expr)
    # invalid prefix sequences are rejected
    assert tok.decode([tok.stoi[s] for s in ["<bos>", "add", "mul", "x_0", "<eos>"]]) is None
    assert tok.decode([tok.stoi[s] for s in ["<bos>", "mul", "+", "N123"]]) is None
    lv = FAMILIES["lotka_volterra"].expression(FAMILIES["lotka_volterra"].nominal)
    assert tok.encode_expression(lv, skeleton=True) == [
        "add", "mul", "<c>", "x_0", "mul", "<c>", "mul", "x_0", "x_1", "|",
        "add", "mul", "<c>", "mul", "x_0", "x_1", "mul", "<c>", "x_1"]


def test_expression_error_is_the_official_text_loss():
    """expression_rel_l2 = official evaluate.py text_loss: sqrt(sum (f_gen - f_true)^2 / (sum f_true^2 + 1e-6)) at the
    points; 0 for the true expression, the relative size of a perturbation otherwise; None (left out of the mean) for a
    decode with another number of components, a variable beyond d or a non-finite value."""
    from lit_models.dynamics.prose_symbolic import expression_rel_l2

    fam = FAMILIES["van_der_pol"]
    true = fam.expression(fam.nominal)
    points = np.random.default_rng(0).uniform(-5, 5, size=(50, 2))
    assert expression_rel_l2(true, true, points) == 0.0
    scaled = [[(1.1 * c, m) for c, m in comp] for comp in true]
    assert expression_rel_l2(scaled, true, points) == pytest.approx(0.1, rel=1e-6)
    assert expression_rel_l2(true[:1], true, points) is None
    assert expression_rel_l2([[(1.0, "x_2")], [(1.0, "x_0")]], true, points) is None
    assert expression_rel_l2([[(np.inf, "x_0")], [(1.0, "x_0")]], true, points) is None


def test_text_corruption_keeps_target_and_changes_input():
    rng = np.random.default_rng(1)
    fam = FAMILIES["fitzhugh_nagumo"]
    expr = fam.expression(fam.nominal)
    changed = sum(corrupt(expr, rng) != expr for _ in range(200))
    assert 100 < changed < 200 and fam.expression(fam.nominal) == expr  # the clean target is untouched


def test_official_per_sample_corruption_one_mode_per_sample():
    """text_corruption=per_sample (official environment.py / generators.py): none / add one term / delete one term
    with 0.70 / 0.15 / 0.15; an added term is a constant, c x_i or c x_i x_j (i <= j: 10 candidates in 3D) at any
    (component, slot); a deleted term comes from a component with at least two."""
    assert len(addition_pool(3)) == 10 and len(addition_pool(2)) == 6 and addition_pool(2)[0] is None
    assert ("mul", "x_0", "x_0") in addition_pool(2) and ("mul", "x_1", "x_0") not in addition_pool(2)
    rng = np.random.default_rng(0)
    fam = FAMILIES["duffing"]  # x0' = x1 (one term: never deleted), x1' = three terms
    expr = fam.expression(fam.nominal)
    counts = {0: 0, 1: 0, -1: 0}
    added_where = set()
    for _ in range(4000):
        out = corrupt_one_term(expr, rng)
        change = sum(map(len, out)) - sum(map(len, expr))
        counts[change] += 1
        assert len(out[0]) >= 1 and len(out) == len(expr)
        if change == 1:
            i = next(k for k in range(2) if len(out[k]) > len(expr[k]))
            new = [t for t in out[i] if t not in expr[i]]
            assert len(new) == 1 and new[0][1] in addition_pool(2)
            added_where.add((i, out[i].index(new[0])))
        elif change == -1:
            assert out[0] == expr[0] and len(out[1]) == 2  # only the three-term component loses a term
        else:
            assert out == expr
    assert counts[0] / 4000 == pytest.approx(0.70, abs=0.03)
    assert counts[1] / 4000 == pytest.approx(0.15, abs=0.02) and counts[-1] / 4000 == pytest.approx(0.15, abs=0.02)
    assert added_where == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)}  # every slot of every component
    assert fam.expression(fam.nominal) == expr
    with pytest.raises(ValueError, match="<= 1"):
        corrupt_one_term(expr, rng, 0.6, 0.6)


def test_official_trajectory_noise_raw_values_and_config_checks():
    """noise_scope=trajectory: per sample, noise of norm gamma ||u||_F over inputs and query targets together (padded
    dims untouched); normalize=none feeds raw values (scale 1); the paper-scale config uses the official choices."""
    from datamodules.prose_data import ProseDataModule, make_split
    from launch import config as zconfig
    from launch.errors import UserError

    dm = ProseDataModule(num_train=64, num_val=8, num_test=40, eval_batch_size=40, noise=0.05,
                         noise_scope="trajectory", normalize="none")
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    split = make_split("ode4", 40, 3, 0.3, 4.0, 0.01, 32, 32, 3)
    assert torch.equal(batch["scale"], torch.ones_like(batch["scale"]))
    clean = torch.tensor(np.concatenate([split["data_in"], split["data_out"]], 1), dtype=torch.float32)
    noisy = torch.cat([batch["data_in"], batch["target"]], 1)
    ratio = torch.linalg.vector_norm(noisy - clean, dim=(1, 2)) / torch.linalg.vector_norm(clean, dim=(1, 2))
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.05), rtol=1e-4, atol=1e-6)
    assert (batch["target"][:, :, 2] == 0).all() and (batch["data_in"][:, :, 2] == 0).all()
    card = ProseDataModule(num_train=64, num_val=8, num_test=40, eval_batch_size=40)
    card.setup("test")
    card_batch = next(iter(card.test_dataloader()))  # card: targets clean, inputs scaled per sample
    torch.testing.assert_close(card_batch["target"] * card_batch["scale"][:, None, :],
                               torch.tensor(split["data_out"], dtype=torch.float32), rtol=1e-5, atol=1e-5)
    cfg = zconfig.compose(["experiment=prose/ode3d"])
    d = cfg.data
    assert (d.text_corruption, d.noise_scope, d.normalize, d.param_range) == ("per_sample", "trajectory", "none", 0.1)
    assert (d.eval_p_add, d.eval_p_delete, cfg.model.layer_norm_eps) == (0.15, 0.15, 1e-12)
    cpu = zconfig.compose(["experiment=prose"])  # the calibrated CPU check keeps the card's choices
    assert (cpu.data.text_corruption, cpu.data.noise_scope, cpu.data.normalize) == ("per_term", "input", "per_sample")
    assert cpu.model.layer_norm_eps == 1e-5
    for bad in ({"text_corruption": "per_word"}, {"noise_scope": "labels"}, {"normalize": "global"},
                {"text_corruption": "per_sample", "eval_p_add": 0.6, "eval_p_delete": 0.6}):
        with pytest.raises(UserError):
            ProseDataModule(**bad)


def test_layer_norm_eps_reaches_every_layer_norm():
    model, _ = _tiny()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) > 10 and all(m.eps == 1e-12 for m in norms)  # official transformer.py
    model, _ = _tiny(layer_norm_eps=1e-5)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_eval_text_options_other_family_and_corruption():
    """Test-time input text (the paper's robustness test and a diagnostic): by default the clean skeleton of the
    sample's own expression; `eval_text=other_family` the skeleton of a sample of the next family present;
    `eval_p_add` / `eval_p_delete` corrupt it with the training rule. The data, its noise and the targets (full
    expression with constants) do not change; bad values are a UserError."""
    from datamodules.prose_data import ProseDataModule
    from launch.errors import UserError

    def first_batch(**kw):
        dm = ProseDataModule(num_train=8, num_val=8, num_test=40, eval_batch_size=40, **kw)
        dm.setup("test")
        return dm, next(iter(dm.test_dataloader()))

    dm, own = first_batch()
    tok, split = dm.tokenizer, dm.splits["test"]
    skeleton = lambda i: tok.skeleton(split["exprs"][i])  # noqa: E731
    decoded = [tok.decode(row.tolist()) for row in own["text_in"]]
    assert [tok.skeleton(d) for d in decoded] == [skeleton(i) for i in range(40)]
    # the encoder input has no <bos> / <eos> (official enc_dec_step); the decoder target starts and ends with them
    assert not torch.isin(own["text_in"], torch.tensor([tok.stoi["<bos>"], tok.stoi["<eos>"]])).any()
    assert (own["text_out"][:, 0] == tok.stoi["<bos>"]).all()

    _, other = first_batch(eval_text="other_family")
    families = split["family"]
    assert len(set(families.tolist())) == 4
    for i, row in enumerate(other["text_in"]):
        wrong = tok.skeleton(tok.decode(row.tolist()))
        assert wrong != skeleton(i)
        assert wrong in [skeleton(j) for j in range(40) if families[j] == (families[i] + 1) % 4]
    _, corrupted = first_batch(eval_p_add=0.5, eval_p_delete=0.5)
    assert not torch.equal(corrupted["text_in"], own["text_in"])
    _, again = first_batch(eval_p_add=0.5, eval_p_delete=0.5)
    assert torch.equal(again["text_in"], corrupted["text_in"])              # fixed seed: the same test set
    for batch in (other, corrupted):
        for key in ("data_in", "target", "text_out", "scale"):
            assert torch.equal(batch[key], own[key]), key
    for bad in ({"eval_text": "true"}, {"eval_p_add": 1.5}, {"p_delete": -0.1}):
        with pytest.raises(UserError):
            ProseDataModule(**bad)


def test_test_param_range_draws_unseen_parameters_for_the_test_split_only():
    """`data.test_param_range=[lo, hi]` (the paper's unseen parameter ranges): Lotka-Volterra's constants are its
    parameters, so every test constant lies at 1 +- [lo, hi] times nominal; train/val splits keep +-param_range."""
    from datamodules.prose_data import ProseDataModule
    from launch.errors import UserError

    nominal = FAMILIES["lotka_volterra"].nominal
    dm = ProseDataModule(num_train=40, num_val=8, num_test=40, test_param_range=[0.3, 0.5])
    dm.setup("fit")
    dm.setup("test")
    for split, (lo, hi) in (("test", (0.3, 0.5)), ("train", (0.0, 0.3))):
        data = dm.splits[split]
        lv = [e for e, f in zip(data["exprs"], data["family"]) if f == 0]
        assert lv
        for expr in lv:
            constants = [abs(c) for comp in expr for c, _ in comp]
            deviation = np.abs(np.asarray(constants) / np.asarray(nominal) - 1.0)
            assert np.all((deviation >= lo - 1e-12) & (deviation <= hi + 1e-12)), (split, deviation)
    for bad in ([0.5, 0.3], [0.3], [0.2, 1.2]):
        with pytest.raises(UserError):
            ProseDataModule(test_param_range=bad)


def _tiny(text_input=True, **kw):
    torch.manual_seed(0)
    tok = SymbolicTokenizer()
    return PROSE(len(tok), tok.pad_id, 3, 32, 2, 64, 1, 1, 1, 1, 1, 0.0, 64, text_input, **kw).eval(), tok


def _inputs():
    g = torch.Generator().manual_seed(0)
    u, t_in = torch.randn(2, 8, 3, generator=g), torch.linspace(0, 2, 8).expand(2, 8)
    t_out = torch.linspace(2.1, 4, 6).expand(2, 6).clone()
    text = torch.randint(5, 20, (2, 7), generator=g)
    return u, t_in, t_out, text, g


@torch.no_grad()
@pytest.mark.parametrize("norm_first", [False, True])
def test_data_decoder_not_causal_and_symbol_decoder_causal(norm_first):
    model, tok = _tiny(norm_first=norm_first)
    u, t_in, t_out, text, g = _inputs()
    (mem, pad), (mem_s, pad_s) = model.memories(*model.fuse(u, t_in, text))
    out = model.data_decoder(t_out, mem, pad)
    # not causal: the first query sees the last input time point
    u2 = u.clone()
    u2[:, -1] += 1.0
    (mem2, pad2), _ = model.memories(*model.fuse(u2, t_in, text))
    assert (model.data_decoder(t_out, mem2, pad2)[:, 0] - out[:, 0]).abs().max() > 1e-6
    # queries are times, not positions: permuting the query times permutes the outputs, and (paper default, no
    # self-attention among queries) each output depends on its own query time only
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    torch.testing.assert_close(model.data_decoder(t_out[:, perm], mem, pad), out[:, perm], atol=1e-5, rtol=1e-5)
    t2 = t_out.clone()
    t2[:, -1] += 0.5
    torch.testing.assert_close(model.data_decoder(t2, mem, pad)[:, :-1], out[:, :-1])
    assert (model.data_decoder(t2, mem, pad)[:, -1] - out[:, -1]).abs().max() > 1e-6
    # symbol decoder is causal
    ids = torch.randint(5, 20, (2, 9), generator=g)
    logits = model.symbol_decoder(ids, mem_s, pad_s)
    ids2 = ids.clone()
    ids2[:, 5:] = 7
    torch.testing.assert_close(model.symbol_decoder(ids2, mem_s, pad_s)[:, :5], logits[:, :5])
    assert (model.symbol_decoder(ids2, mem_s, pad_s)[:, 6:] - logits[:, 6:]).abs().max() > 1e-6


@torch.no_grad()
@pytest.mark.parametrize("norm_first", [False, True])
def test_fusion_attends_text_masks_padding_and_uses_type_embedding(norm_first):
    """The fusion pitfalls of the card: text tokens reach the data prediction, padded text positions do not, the
    modality-type embedding is in use, and the decoders read the split fused features (official default)."""
    model, tok = _tiny(norm_first=norm_first)
    u, t_in, t_out, text, g = _inputs()
    pred = model(u, t_in, t_out, text)[0]
    # every real text token is attended: changing any one of them changes the data prediction
    for j in range(text.shape[1]):
        other = text.clone()
        other[:, j] = 4 if int(text[0, j]) != 4 else 5
        assert (model(u, t_in, t_out, other)[0] - pred).abs().max() > 1e-6, j
    # padding is masked: extra <pad> tokens change nothing (and a sequence that is mostly padding still works)
    padded = torch.cat([text, torch.full((2, 5), tok.pad_id)], 1)
    torch.testing.assert_close(model(u, t_in, t_out, padded)[0], pred, atol=1e-5, rtol=1e-5)
    short = torch.full((2, 7), tok.pad_id)
    short[:, :2] = text[:, :2]
    assert torch.isfinite(model(u, t_in, t_out, short)[0]).all()
    # the type embedding is used (data and text rows both matter)
    shift = torch.randn(model.fusion.type_embedding.weight.shape[1], generator=g)  # not a constant: LN removes it
    for row in (0, 1):
        model.fusion.type_embedding.weight[row] += shift
        assert (model(u, t_in, t_out, text)[0] - pred).abs().max() > 1e-6, row
        model.fusion.type_embedding.weight[row] -= shift
    # split features: data decoder memory = fused data tokens, symbol decoder memory = fused text tokens
    fused, pad, n = model.fuse(u, t_in, text)
    (md, _), (ms, _) = model.memories(fused, pad, n)
    assert n == u.shape[1] and md.shape[1] == u.shape[1] and ms.shape[1] == text.shape[1]


@torch.no_grad()
@pytest.mark.parametrize("norm_first, eos_bias", [(False, 3.0), (True, 2.5)])
def test_cached_greedy_decoding_gives_the_tokens_of_the_full_prefix_decoder(norm_first, eos_bias):
    """Greedy decoding caches the prefix's keys and values (one token per step through the layers); it must give the
    tokens of re-running the causal decoder on the whole prefix each step: rows that end at different steps (<eos>),
    rows that never end, and rows that emit <pad> (masked as a key afterwards, as tgt_key_padding_mask). Two symbol
    decoder layers (one cache each) and dropout (inactive in eval mode)."""
    torch.manual_seed(0)
    tok = SymbolicTokenizer()
    model = PROSE(len(tok), tok.pad_id, 3, 32, 2, 64, 1, 1, 1, 1, 2, 0.1, 64, True, norm_first=norm_first).eval()
    g = torch.Generator().manual_seed(0)
    u, t_in = torch.randn(40, 8, 3, generator=g), torch.linspace(0, 2, 8).expand(40, 8)
    text = torch.randint(5, 20, (40, 7), generator=g)
    text[:20, 4:] = tok.pad_id  # padded memory rows
    model.symbol_decoder.out_bias[tok.eos_id] = eos_bias  # an untrained decoder: make <eos> and <pad> come up
    model.symbol_decoder.out_bias[tok.pad_id] = 3.0
    _, (mem, pad) = model.memories(*model.fuse(u, t_in, text))
    full = model.generate(mem, pad, tok.bos_id, tok.eos_id, 24, cache=False)
    cached = model.generate(mem, pad, tok.bos_id, tok.eos_id, 24)
    assert torch.equal(cached, full)
    ended = (full == tok.eos_id).any(1)
    assert 0 < int(ended.sum()) < len(full) and full.shape[1] == 24
    assert len({int((row == tok.eos_id).nonzero()[0]) for row in full[ended]}) >= 3  # rows end at different steps
    before_eos = torch.cumsum(full == tok.eos_id, 1) == 0
    assert int(((full == tok.pad_id) & before_eos).any(1).sum()) >= 10  # <pad> emitted while decoding


@torch.no_grad()
def test_post_norm_blocks_as_the_official_transformer():
    """Default layout = official `transformer.py`: LayerNorm on every stack's input embeddings, post-norm layers
    (x = LN(x + sublayer(x))), no final LayerNorm; so each stack's output is LayerNorm-ed per token (mean 0, var 1 at
    the LayerNorm's initial weights). norm_first=True is the pre-norm layout (final LayerNorm, no embedding norm)."""
    model, tok = _tiny()
    u, t_in, t_out, text, _ = _inputs()
    for stack in (model.data_encoder.encoder, model.text_encoder.encoder, model.fusion.encoder):
        assert stack.norm is None and not stack.layers[0].norm_first
    assert model.symbol_decoder.decoder.norm is None and not model.symbol_decoder.decoder.layers[0].norm_first
    assert isinstance(model.data_decoder.norm, torch.nn.Identity) and not model.data_decoder.layers[0].norm_first
    for block in (model.data_encoder, model.text_encoder, model.symbol_decoder):
        assert isinstance(block.embedding_norm, torch.nn.LayerNorm)
    # one post-norm operator layer by hand: q = LN(q + cross(q)); q = LN(q + FFN(q))
    layer = model.data_decoder.layers[0]
    (mem, pad), _ = model.memories(*model.fuse(u, t_in, text))
    q = torch.randn(2, 6, 32)
    h = layer.norm_q(q + layer.cross(q, mem, mem, key_padding_mask=pad, need_weights=False)[0])
    torch.testing.assert_close(layer(q, mem, pad), layer.norm_f(h + layer.ffn(h)))
    # stack outputs are normalised per token
    out = model.data_encoder(u, t_in)
    torch.testing.assert_close(out.mean(-1), torch.zeros(out.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(out.shape[:2]), atol=1e-3, rtol=0)
    pre, _ = _tiny(norm_first=True)
    assert pre.data_encoder.encoder.norm is not None and pre.data_encoder.encoder.layers[0].norm_first
    assert isinstance(pre.text_encoder.embedding_norm, torch.nn.Identity)


def test_data_only_is_the_official_no_text_network():
    """--no_text: the fused model minus its text encoder, fusion block and symbol decoder; the data decoder reads the
    data encoder's features (no text, no type embedding)."""
    fused, _ = _tiny(True)
    data_only, _ = _tiny(False)
    a = {k: v.shape for k, v in fused.named_parameters()}
    b = {k: v.shape for k, v in data_only.named_parameters()}
    dropped = {k for k in a if k.startswith(("text_encoder.", "fusion.", "symbol_decoder."))}
    assert set(a) - set(b) == dropped and set(b) <= set(a)
    assert all(a[k] == b[k] for k in b)
    u, t_in, t_out, text, _ = _inputs()
    with torch.no_grad():
        pred, logits = data_only(u, t_in, t_out, text)
        assert logits is None and pred.shape == fused(u, t_in, t_out, text)[0].shape
        mem, pad, n = data_only.fuse(u, t_in, None)
        torch.testing.assert_close(mem, data_only.data_encoder(u, t_in))
        assert not bool(pad.any()) and n == mem.shape[1]


def test_normalisation_is_undone_and_padded_dims_do_not_enter_the_loss():
    from datamodules.prose_data import ProseDataModule, make_split
    from lit_models.dynamics.prose import ProseModule

    dm = ProseDataModule(num_train=64, num_val=8, num_test=40, eval_batch_size=40)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    split = make_split("ode4", 40, 3, 0.3, 4.0, 0.01, 32, 32, 3)
    # target x scale is the raw trajectory; inputs are normalised per sample (max |noisy u| = 1 on valid dims)
    torch.testing.assert_close(batch["target"] * batch["scale"][:, None, :],
                               torch.tensor(split["data_out"], dtype=torch.float32), rtol=1e-5, atol=1e-5)
    valid = batch["dim_mask"]
    assert torch.allclose(batch["data_in"].abs().amax(1)[valid], torch.ones(int(valid.sum())))
    assert (batch["data_in"][:, :, 2] == 0).all() and not valid[:, 2].any()
    torch.manual_seed(0)
    module = ProseModule(dim_emb=16, n_heads=2, dim_ffn=32, n_text_enc_layers=1, n_data_enc_layers=1,
                         n_fusion_layers=1, n_data_dec_layers=1, n_text_dec_layers=1, max_gen_len=8)
    with torch.no_grad():
        mse = module._losses(batch)[0]
        module.model.data_decoder.out.bias[2] += 10.0  # only the padded dimension moves
        torch.testing.assert_close(module._losses(batch)[0], mse)
        module.model.data_decoder.out.bias[0] += 1.0
        assert module._losses(batch)[0] > mse + 0.1
        # the training data loss (default: the official per-sample relative squared error, batch mean) ignores the
        # padded dimension too and equals trainer.enc_dec_step's weighting 1 / (||y_i||^2 + 1e-5) / B
        pred = module(batch)[0]
        m = batch["dim_mask"][:, None, :].float()
        w = 1.0 / (((batch["target"] * m) ** 2).sum((1, 2)) + 1e-5) / len(pred)
        official = (w * (((pred - batch["target"]) * m) ** 2).sum((1, 2))).sum()
        torch.testing.assert_close(module._losses(batch)[5], official, rtol=1e-5, atol=1e-7)
        module.hparams.data_loss = "mse"
        torch.testing.assert_close(module._losses(batch)[5], module._losses(batch)[0])


def test_ode6_has_3d_families_padded_consistently():
    from datamodules.prose_data import make_split

    split = make_split("ode6", 60, 0, 0.3, 4.0, 0.01, 32, 32, 3)
    assert set(split["dim"].tolist()) == {2, 3}
    two = split["dim"] == 2
    assert (split["data_in"][two][..., 2] == 0).all() and np.isfinite(split["data_out"]).all()
    tok = SymbolicTokenizer()
    for e in split["exprs"]:
        assert tok.decode(tok.encode(e)) == tok.round_expression(e)
        assert len(corrupt(e, np.random.default_rng(0))) == len(e)


def test_paper_scale_grid_and_optimiser_are_the_official():
    """experiment=prose/ode3d: parsers.py's time grid (t_range 6, 192 points, the first 64 the input: inputs on
    [0, 2], 128 queries on (2, 6]) and symbolicregression/optim.py's Adam, whose weight decay shrinks the weights
    directly (decoupled: AdamW); the card's default keeps inputs on the first half."""
    from datamodules.prose_data import make_split
    from launch import config as zconfig

    cfg = zconfig.compose(["experiment=prose/ode3d"])
    d = cfg.data
    assert (d.t_end, d.n_input, d.n_output) == (6.0, 64, 128)
    assert cfg.model.optimizer._target_ == "torch.optim.AdamW" and cfg.model.optimizer.weight_decay == 1e-4
    split = make_split("ode4", 4, 0, 0.3, d.t_end, 0.01, d.n_input, d.n_output, 3, None, d.input_fraction)
    assert split["data_in"].shape[1] == 64 and split["data_out"].shape[1] == 128
    assert split["t_in"][0] == 0 and split["t_in"][-1] == pytest.approx(2.0)
    assert split["t_out"][0] > 2.0 and split["t_out"][-1] == pytest.approx(6.0)
    card = make_split("ode4", 4, 0, 0.3, 4.0, 0.01, 32, 32, 3)
    assert card["t_in"][-1] == pytest.approx(2.0) and card["t_out"][-1] == pytest.approx(4.0)
    from datamodules.prose_data import ProseDataModule
    from launch.errors import UserError

    with pytest.raises(UserError, match="input_fraction"):
        ProseDataModule(input_fraction=1.0)


def test_paper_variant_trains_with_the_official_data_settings():
    """experiment=prose/ode3d end to end at tiny sizes: per-sample text corruption (validation text corrupted too),
    trajectory noise on inputs and targets, raw values, parameter range 0.1, LayerNorm eps 1e-12."""
    run = fast_run("prose/ode3d", "data.num_train=64", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
                   "data.eval_batch_size=16", "data.num_workers=0", "model.dim_emb=16", "model.n_heads=2",
                   "model.dim_ffn=32", "model.n_text_enc_layers=1", "model.n_data_enc_layers=1",
                   "model.n_fusion_layers=1", "model.n_data_dec_layers=1", "model.n_text_dec_layers=1",
                   "model.max_gen_len=40", "model.warmup_steps=0")
    run.assert_contract()
    dm = run.datamodule
    assert (dm.hparams.text_corruption, dm.hparams.noise_scope, dm.hparams.normalize) == \
        ("per_sample", "trajectory", "none")
    batch = next(iter(dm.test_dataloader()))
    assert torch.equal(batch["scale"], torch.ones_like(batch["scale"]))  # raw values
    assert all(m.eps == 1e-12 for m in run.model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_bad_config_raises_value_error():
    from lit_models.dynamics.prose import ProseModule

    with pytest.raises(ValueError, match="multiple of n_heads"):
        ProseModule(dim_emb=30, n_heads=4)
    with pytest.raises(ValueError, match="max_dim"):
        ProseModule(max_dim=5, dim_emb=16, n_heads=2)


def test_float_precision_is_bounded():
    """The vocabulary holds 9 x 10^(p-1) mantissa tokens: float_precision 7 built a 9-million-token vocabulary and died
    allocating 45 GB, 0 failed inside range(); both constructors now reject anything outside 1..4."""
    from datamodules.prose_data import ProseDataModule
    from launch.errors import UserError
    from lit_models.dynamics.prose import ProseModule

    for bad in (0, 5, 7):
        with pytest.raises(UserError, match="float_precision"):
            ProseDataModule(float_precision=bad)
        with pytest.raises(ValueError, match="float_precision"):
            ProseModule(float_precision=bad, dim_emb=16, n_heads=2)
    assert len(ProseDataModule(float_precision=4).tokenizer) > 9000


def test_more_time_points_than_the_window_has_grid_points_is_an_error():
    """n_input (n_output) beyond the RK4 grid points of the input (query) window repeated time points silently
    (data.n_input=500 on a 201-point window trained); it is a UserError, the default grids still build."""
    from datamodules.prose_data import ProseDataModule, make_split
    from launch.errors import UserError

    for kw in ({"n_input": 500}, {"n_output": 201}, {"n_input": 202}):
        dm = ProseDataModule(num_train=8, num_val=8, num_test=8, **kw)
        with pytest.raises(UserError, match="time points would repeat"):
            dm.setup("fit")
    split = make_split("ode4", 8, 0, 0.3, 4.0, 0.01, 201, 200, 3)  # every grid point of both windows: still fine
    assert len(set(split["t_in"].tolist())) == 201 and len(set(split["t_out"].tolist())) == 200


def test_float_encoding_writes_underflow_as_zero_and_rejects_overflow():
    """The exponent was clamped without fixing the mantissa: 3e-12 encoded as 3e-11, 0.0 as 1e-11, 2.5e14 as 2.5e12.
    As the official encoder, magnitudes below the smallest representable (10^-max_exponent) are written as zero (the
    lowest exponent token); beyond the largest, encoding raises ValueError."""
    tok = SymbolicTokenizer(max_dim=3, float_precision=3)
    for tiny in (3e-12, -5e-11, 0.0, 9.9e-11):
        assert tok.round_float(tiny) == 0.0, tiny
    assert tok.float_tokens(0.0) == tok.float_tokens(3e-12) == ["+", "N100", "E-13"]
    assert tok.round_float(1e-10) == 1e-10 and tok.round_float(9.996e-11) == 1e-10  # rounds up: representable
    assert tok.round_float(-1.234e-10) == -1.23e-10 and tok.round_float(9.99e12) == 9.99e12
    for huge in (2.5e14, 9.996e12, -1e13, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            tok.float_tokens(huge)
    expr = [[(0.0, "x_0"), (2e-13, None)], [(-0.5, "x_1")]]
    assert tok.decode(tok.encode(expr)) == [[(0.0, "x_0"), (0.0, None)], [(-0.5, "x_1")]]


# ---- the card's learning claims (configs/experiment/prose.yaml `claims:`) -------------------------------------
# The claim tests share runs through launch.check's per-process cache (the fused run trains once for all three
# claims), and `make test` (`pytest -n 2 --dist loadfile`) runs a file's tests in one worker.


@pytest.mark.slow
def test_claim_fusion_helps_and_fails_with_baseline():
    """Card check 1: query-window relative L2 of the data decoder, fused <= 0.7 x data-only. The data-only model is
    the official --no_text (no text encoder, fusion or symbol decoder; data loss only). MEASURED with the official
    text-encoder input (no <bos> / <eos>): 300 steps fused 0.333 / 0.344 / 0.389 vs data-only 0.431 / 0.387 / 0.409
    (seeds 0 / 1 / 2; ratio 0.77 / 0.89 / 0.95). Before, with both tokens (2026-12-06): 300
    steps (the config) fused 0.340 / 0.331 vs data-only 0.431 / 0.387 (seeds 0 / 1; ratio 0.79 / 0.85); the card's
    model (width 64 / FFN 256 / batch 64) at 1,500 steps 0.1463 / 0.1187 vs 0.165 / 0.147
    (0.89 / 0.81) and at its full 3,000 steps (~15 min per fused run, not in CI) 0.0942 / 0.1062 vs 0.151 / 0.136
    (0.62 / 0.78): the card's 0.7x is reached at seed 0 of the full budget only. Until 2026-12-06 the data-only model
    kept the fusion block and the symbol decoder and trained on its cross-entropy too; that symbolic supervision
    helped it nearly as much as the text: 0.316 at 300 steps, 0.1471 / 0.1158 at 1,500, 0.1072 / 0.1083 at 3,000.
    Not a fusion bug: the fused models rely on their text (another family's skeleton as input text,
    data.eval_text=other_family: 0.360 / 0.380 at 3,000 steps, skeleton accuracy 0.984 -> 0.112 / 1.000 -> 0.392).
    The claim keeps the card's threshold with a `known_gap`, so this test xfails while the gap stands. Swapping the
    fused run for the data-only model must fail (data_only <= 0.7 x data_only is false)."""
    torch.set_num_threads(1)
    swapped = run_claim("prose", "fusion_helps", swap_baseline=True)
    assert not swapped.passed, swapped.report()
    result = run_claim("prose", "fusion_helps")
    if not result.passed:
        assert result.verdict == "KNOWN GAP", result.report()  # finite values and the claim's floors met
        pytest.xfail(result.report())


@pytest.mark.slow
def test_claims_symbol_decoder_valid_and_skeleton_exact_and_fail_untrained():
    """Card check 2 at the card's model (width 64, FFN 256, layers 1/1/2/2/2, batch 64) and trimmed budget (1,500 Adam
    steps; ~0.2 s a step, ~5 min for this training on one thread): greedy decodes are valid prefix expressions for
    >= 95% of the test samples and the decoded skeleton is exactly right for >= 90% (uncorrupted input text: the
    input is the true skeleton, so the claims show that the decoder reproduces it, not that it infers it from the data;
    not asserted: at seed 0 the paper's test-time corruption, eval_p_add = eval_p_delete = 0.15, 58.8% of the input
    skeletons wrong, gives skeleton 0.986 and valid 1.000, another family's skeleton as input 0.006 and 1.000).
    MEASURED (500 test samples, 2026-12-07, one machine): valid 1.000 / 1.000 / 0.970 / 0.984 and skeleton 1.000 /
    0.924 / 0.918 / 0.984 at seeds 0-3 (all pass). Earlier checkpoints of the same runs (the inverse-sqrt schedule does
    not depend on max_steps): at 1,000 steps valid 0.976 / 1.000 / 1.000 / 0.962 and skeleton 0.962 / 0.930 / 0.976 /
    0.962; at 900 seed 1 misses (0.904 / 0.894), at 800 seeds 0, 1 and 3 (valid / skeleton 0.798 / 0.784, 0.970 / 0.892,
    0.700 / 0.700); 1,000 steps is not used: a budget picked on the seeds it is reported on proves little. An earlier
    measurement at 1,500 steps (another machine or code state) gave valid 1.000 / 1.000 / 0.880 and skeleton 1.000 /
    0.902 / 0.812 at seeds 0 / 1 / 2 with the official text-encoder input (no <bos> / <eos>); with both tokens valid
    1.000 / 0.958 / 0.930 / 1.000 and skeleton 0.980 / 0.906 / 0.882 / 1.000 at seeds 0-3; a data-only model that kept a
    symbol decoder (before 2026-12-06, 1,500 steps) 0.992 / 0.906 and 0.968 / 0.896 (seeds 0 / 1). At the cheaper config of the
    fusion claim (width 32, batch 32, 300 steps) only 0.500 / 0.250 / 0.364 valid and 0.250 / 0.042 / 0.082 skeleton
    (seeds 0 / 1 / 2), hence the card's model here. Baseline text_loss_weight=0 (symbol decoder untrained): valid
    0.000, skeleton 0.000 after 1,500 steps and after 1 step alike (without the symbol loss the decoder, which shares
    no weights with the rest, gets no gradient; 1 step: 0.000 / 0.000 at seeds 0 and 1), so the baseline trains 1 step
    and the swapped claims fail. Whole add-first families flip between nearby checkpoints (Lotka-Volterra decoded as
    FitzHugh-Nagumo; a mantissa token dropped in FitzHugh-Nagumo's widely spread constants; seed 3: 0.962 at 1,000
    steps, 0.826 at 1,100), so a pass is seed-dependent: both claims carry a `known_gap` and this test xfails, with the
    report, if the configured run misses. No decoding bug (greedy prefix logits equal the teacher-forced ones; cached
    greedy decoding gives the tokens of the full-prefix decoder: identical decodes at all 22 checkpoints of seeds 0 / 1
    above)."""
    torch.set_num_threads(1)
    claims_pass_or_xfail("prose", ("symbols_valid", "skeleton_exact"))


def test_generated_expression_reads_as_infix():
    """The trajectory figure's title shows the decoded right-hand side (it showed raw prefix tokens)."""
    from lit_models.dynamics.prose_symbolic import format_expression

    expr = [[(1.5, "x_0"), (-0.5, ("mul", "x_0", "x_1"))], [(0.2, None), (-1.0, ("pow3", "x_1"))]]
    assert format_expression(expr) == "dx_0/dt = 1.5*x_0 - 0.5*x_0*x_1; dx_1/dt = 0.2 - 1*x_1^3"


def test_ddp_ranks_share_one_permutation_of_the_epoch():
    """Each rank permuted the epoch with its own seed and took every world-th sample of it: a quarter of the samples
    went to both ranks and a quarter to neither, and the loader's length said 625 batches where a rank made 313 (DDP
    audit). The ranks now split one permutation: disjoint, together the epoch, the same number of batches."""
    from types import SimpleNamespace

    from datamodules.prose_data import ProseDataModule

    def samples(rank: int, world: int) -> tuple[set, int]:
        dm = ProseDataModule(num_train=64, num_val=8, num_test=8, batch_size=8)
        dm.setup("fit")
        epoch = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, fit_loop=epoch)
        loader = dm.train_dataloader()
        rows = [tuple(np.round((b["target"] * b["scale"][:, None, :])[i].flatten().numpy(), 2))
                for b in loader for i in range(len(b["target"]))]
        assert len(rows) == len(loader.dataset) * 8, (len(rows), len(loader.dataset))
        return set(rows), len(loader.dataset)

    (all_rows, steps), (rank0, steps0), (rank1, steps1) = samples(0, 1), samples(0, 2), samples(1, 2)
    assert steps == 8 and steps0 == steps1 == 4
    assert not rank0 & rank1 and rank0 | rank1 == all_rows
