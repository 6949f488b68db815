"""Plain pytest for amaformer.gen.model (loader, graph capture, device-exact evaluation) and the
per-row requantization golden model (amaformer.gen.requant_row)."""

import dataclasses
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amaformer.gen.model import (CALIBRATION_COUNT, UnsupportedModuleError, capture, load_minilm,
                                 load_sentences, sentence_embedding)
from amaformer.gen.program import DEFAULT_NUMERICS
from amaformer.gen.model.exact import (Encoding, Numerics, calibrate, compile_model, evaluate,
                                       float_forward, reference)
from amaformer.gen.numerics import REQUANT_MULT_BITS, requantize
from amaformer.gen.requant_row import (pack_row_factor, row_acc_bits, row_factors,
                                       row_requantize, unpack_row_factor)

#: The numerics the study picks for MiniLM (scripts/study_numerics.py, option g1).
#: The compiler's scheme (gen.program.DEFAULT_NUMERICS) with the default unit's max_k.
CHOSEN = dataclasses.replace(DEFAULT_NUMERICS, k_chunk=512)
#: The per-row-factor scheme (d2 + SmoothQuant), whose golden (gen.requant_row) stays tested.
ROW = Numerics(act_scale="row", row_bits=1, smooth=0.5, out_headroom=1.5)


# --- a tiny random BERT, built in-process ------------------------------------------------------

def tiny_bert(layers=2, hidden=64, heads=4, seed=0, std=0.08):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, vocab_size=100, max_position_embeddings=64,
                     initializer_range=std)
    return BertModel(cfg, add_pooling_layer=False).eval().double()


def tiny_ids(count, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 100, (int(n),), generator=g)
            for n in torch.randint(6, 20, (count,), generator=g)]


@pytest.fixture(scope="module")
def tiny():
    model = tiny_bert()
    graph = capture(model)
    ids = tiny_ids(12)
    return graph, calibrate(graph, ids[:4]), ids[4:]


# --- loader and sentences ----------------------------------------------------------------------

def test_load_minilm_offline_cached():
    lm = load_minilm()
    assert load_minilm() is lm
    ids = lm.ids("Hello world.")
    assert ids.tolist() == [101, 7592, 2088, 1012, 102]
    emb = sentence_embedding(lm.model, ids)
    assert emb.shape == (384,) and emb.dtype == torch.float64
    with torch.no_grad():
        h = lm.model(input_ids=ids[None]).last_hidden_state[0]
    assert torch.allclose(emb, h.mean(0))
    with pytest.raises(TypeError, match=r"^sentence must be a str, not 3$"):
        lm.ids(3)


def test_sentences():
    calib, held = load_sentences()
    assert len(calib) == CALIBRATION_COUNT == 8
    assert len(held) >= 40 and len(calib) + len(held) >= 48
    assert len(set(calib + held)) == len(calib) + len(held)
    assert all(s[0].isupper() for s in calib + held)


# --- graph capture -----------------------------------------------------------------------------

def test_capture_tiny():
    model = tiny_bert()
    g = capture(model)
    assert (g.hidden, g.heads, len(g.layers), g.pooling) == (64, 4, 2, "mean")
    ly = g.layers[1]
    assert ly.head_dim == 16 and ly.activation == "gelu"
    assert ly.query.module is model.encoder.layer[1].attention.self.query
    assert ly.ffn_out.module is model.encoder.layer[1].output.dense
    assert ly.ffn_norm.module is model.encoder.layer[1].output.LayerNorm
    assert [op.role for op in ly.linear_ops] == ["query", "key", "value", "attn_out", "ffn_in",
                                                 "ffn_out"]
    assert [op.name for op in g.linear_ops()][4] == "encoder.layer.0.intermediate.dense"
    assert [op.input_from_host for op in ly.linear_ops] == [True] * 3 + [False] + [True] * 2
    macs = g.macs(10)
    assert macs["encoder.layer.0.output.dense"] == 10 * 128 * 64
    assert macs["attention.1"] == 2 * 10 * 10 * 64


def test_capture_minilm():
    g = capture(load_minilm().model)
    assert (g.hidden, g.heads, len(g.layers)) == (384, 12, 6)
    assert g.layers[0].ffn_in.out_features == 1536
    assert len(g.linear_ops()) == 36
    assert sum(op.macs_per_token for op in g.linear_ops()) == 6 * (4 * 384 ** 2 + 2 * 384 * 1536)


def test_capture_unsupported_activation():
    model = tiny_bert()
    model.encoder.layer[1].intermediate.intermediate_act_fn = torch.nn.SiLU()
    with pytest.raises(UnsupportedModuleError) as exc:
        capture(model)
    msg = str(exc.value)
    assert msg.startswith("cannot map encoder.layer.1.intermediate.intermediate_act_fn (SiLU): "
                          "activation must be one of ")
    assert "\n" not in msg


def test_capture_unsupported_projection():
    model = tiny_bert()
    model.encoder.layer[0].attention.self.key = torch.nn.Identity()
    with pytest.raises(UnsupportedModuleError, match=r"^cannot map encoder\.layer\.0\.attention"
                       r"\.self\.key \(Identity\): expected a torch\.nn\.Linear$"):
        capture(model)


def test_capture_wrong_type():
    with pytest.raises(TypeError, match=r"^model must be a torch\.nn\.Module, not 3$"):
        capture(3)


# --- exact evaluation on the tiny model ---------------------------------------------------------

def test_float_forward_is_the_model(tiny):
    graph, _, ids = tiny
    for i in ids[:3]:
        h, layers = float_forward(graph, i)
        emb, ref_layers = reference(graph, i)
        assert torch.allclose(h, ref_layers[-1], atol=1e-10)
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(layers, ref_layers))


@pytest.mark.parametrize("numerics", [Numerics(legacy=True), Numerics(), CHOSEN,
                                      Numerics(outliers=4, out_bits=16, out_headroom=1.5),
                                      Numerics(act_scale="row", out_bits=32),
                                      Numerics(ctx_scale="channel", act_scale="row")])
def test_exact_tiny_high_cosine(tiny, numerics):
    graph, cal, ids = tiny
    res = evaluate(cal, ids, numerics)
    assert res.cosine_min >= 0.995, res.to_dict()
    assert len(res.layer_cosines) == 2 and min(res.layer_cosines) > 0.99
    assert res.mult_free_fraction == 0


def test_exact_tiny_encodings(tiny):
    graph, cal, ids = tiny
    enc = {"query": Encoding("shift", 4), "ffn_in": Encoding("bcq", 3, group=32)}
    res = evaluate(cal, ids, CHOSEN, enc)
    assert res.cosine_min > 0.98, res.to_dict()
    lin = 4 * 64 * 64 + 2 * 64 * 128
    assert res.mult_free_fraction == pytest.approx((64 * 64 + 64 * 128) / lin)
    assert res.mult_free_fraction_all < res.mult_free_fraction


def test_exact_tiny_drops_when_broken(tiny):
    """A wrong requantization multiplier or attention scale must show in the cosine."""
    graph, cal, ids = tiny
    for num, scale_break in ((ROW, "row"), (CHOSEN, "token")):
        good = evaluate(cal, ids, num).cosine_min
        for breakage in ("mult", "attention", scale_break):
            cm = compile_model(cal, num)
            ly = graph.layers[0]
            if breakage == "mult":
                cm.ops[ly.ffn_out.name].mult[::2] //= 2
            elif breakage == "attention":
                sm, ss, om, os_ = cm.attention[0]
                cm.attention[0] = (sm, ss, om * 2, os_)     # output scale off by 2
            elif breakage == "row":
                cm.ops[ly.ffn_in.name].in_scale *= 1.5       # the unit the host assumes is wrong
            else:
                cm.ops[ly.ffn_in.name].out_scale[::2] *= 1.5  # host rescales rows wrongly
            res = evaluate(cal, ids, num, compiled=cm)
            assert res.cosine_min < good - 0.005, (breakage, good, res.cosine_min)


def _op_bound_check(ql, x, slack=1.0):
    """Independent float reference of one host-fed op: every non-saturated output within the
    bound of linear_mul's docstring, extended to per-row scales (s_x[m] = unit·r·2^e)."""
    x_q, x_out, r, e, s_row = ql.quantize_input(x)
    assert x_out is None
    y_q = ql.device(x_q, None, r, e)
    w_q = ql.w_int.to(torch.float64)
    xs = x.to(torch.float64) / (ql.smooth if ql.smooth is not None else 1)
    ref = torch.nn.functional.linear(x.to(torch.float64), ql.op.module.weight.double(),
                                     ql.op.module.bias.double())
    y = y_q.double() * ql.out_scale
    sw = ql.w_scale
    w_eff = ql.op.module.weight.double().t() * (ql.smooth[:, None] if ql.smooth is not None
                                               else 1)
    e_w = (w_eff / sw - w_q).abs()                       # weight rounding, in steps
    e_x = (xs / s_row[:, None] - x_q).abs()              # activation rounding, in steps
    acc = x_q.double() @ w_q
    terms = (x_q.double().abs() @ e_w + e_x @ w_q.abs() + e_x @ e_w)
    bias_err = 0.5 * ql.in_scale * sw                    # bias in units of unit·s_w
    bound = (s_row[:, None] * sw * (terms + 2.0 ** -13 * acc.abs()) + bias_err
             + ql.out_scale / 2)
    top = 2 ** (ql.out_bits - 1) - 1
    ok = y_q.abs() < top
    return bool(((y - ref).abs()[ok] <= slack * bound[ok]).all()), int(ok.sum())


def test_exact_op_against_float_bound(tiny):
    graph, cal, ids = tiny
    cm = compile_model(cal, ROW)
    ly = graph.layers[1]
    x = cal.inputs[ly.ffn_out.name]
    ql = cm.ops[ly.ffn_out.name]
    ok, n = _op_bound_check(ql, x)
    assert ok and n > 0.9 * x.shape[0] * ql.op.out_features
    # the same check fails when the device's arithmetic is wrong: one row exponent off by one
    good_device = ql.device

    def broken(x_q, x_out, r, e):
        e = e.clone()
        e[0] = (e[0] + 1) % 8
        return good_device(x_q, x_out, r, e)
    ql.device = broken
    assert not _op_bound_check(ql, x)[0]


def test_numerics_validation():
    with pytest.raises(ValueError, match=r"^act_scale must be 'tensor', 'row' or 'token', not "
                                         r"'tok'$"):
        Numerics(act_scale="tok")
    with pytest.raises(ValueError, match=r"^k_chunk must be None or a positive integer, not 0$"):
        Numerics(act_scale="token", k_chunk=0)
    with pytest.raises(ValueError, match=r"^out_bits must be 8, 16 or 32, not 12$"):
        Numerics(out_bits=12)
    with pytest.raises(ValueError, match=r"^bits must be an integer in \[1, 4\] for bcq, not 5$"):
        Encoding("bcq", 5)
    with pytest.raises(ValueError, match=r"^mode must be one of mul, shift, bcq, not 'lut'$"):
        Encoding("lut")


@pytest.mark.slow
def test_exact_minilm_chosen():
    """all-MiniLM-L6-v2, 6 held-out sentences, the compiler's numerics (int8 weights): the
    issue's target, 0.995, on the device-exact path."""
    lm = load_minilm()
    graph = capture(lm.model)
    calib, held = load_sentences()
    cal = calibrate(graph, [lm.ids(s) for s in calib])
    res = evaluate(cal, [lm.ids(s) for s in held[:6]], CHOSEN)
    assert res.cosine_min >= 0.995, res.to_dict()


# --- per-row requantization golden --------------------------------------------------------------

def ref_row_requant(acc, r, e, b, m, s, out_bits):
    """Straightforward reference with exact rationals: round half up of ``t·M / 2^S``."""
    t = acc * r * 2 ** e + b
    v = Fraction(t * m, 2 ** s)
    y = math.floor(v + Fraction(1, 2))
    return max(-(1 << (out_bits - 1)), min((1 << (out_bits - 1)) - 1, y))


def _one(acc, r, e, b, m, s, out_bits=8, row_bits=4, exp_bits=3):
    t = lambda v: torch.tensor([v])
    return int(row_requantize(torch.tensor([[acc]]), t(r), t(e), t(b), t(m), t(s), out_bits,
                              row_bits=row_bits, exp_bits=exp_bits)[0, 0])


@pytest.mark.parametrize("case", [
    # (acc, r, e, bias, M, S, out_bits): ties, negative ties, zero, saturation, widest operands
    (3, 8, 0, 0, 1, 4, 8),           # 24/16 = 1.5 → 2
    (-3, 8, 0, 0, 1, 4, 8),          # -1.5 → -1 (half up)
    (5, 8, 0, 0, 1, 4, 8),           # 40/16 = 2.5 → 3
    (-5, 8, 0, 0, 1, 4, 8),          # -2.5 → -2
    (0, 15, 7, 0, 65535, 63, 8),     # zero
    (0, 8, 0, -7, 3, 0, 8),          # bias only, S = 0 (no rounding term)
    (1000, 15, 7, 0, 65535, 10, 8),  # saturates high
    (-1000, 15, 7, 0, 65535, 10, 8), # saturates low
    (-(1 << 26), 15, 7, -(1 << 31) + 1, 32768, 63, 16),   # widest acc, r, e, bias; S max
    ((1 << 26) - 1, 15, 7, (1 << 31) - 1, 65535, 45, 16),
    (12345, 9, 3, 777, 40000, 30, 8),
])
def test_row_requant_edges(case):
    acc, r, e, b, m, s, ob = case
    assert _one(acc, r, e, b, m, s, ob) == ref_row_requant(acc, r, e, b, m, s, ob)


@settings(max_examples=300, deadline=None)
@given(acc=st.integers(-(1 << 26), (1 << 26) - 1), row_bits=st.integers(1, 8),
       exp_bits=st.integers(0, 3), r_frac=st.floats(0, 1), e_frac=st.floats(0, 1),
       b=st.integers(-(1 << 31) + 1, (1 << 31) - 1), m=st.integers(0, (1 << 16) - 1),
       s=st.integers(0, 63), out_bits=st.sampled_from([8, 16]))
def test_row_requant_property(acc, row_bits, exp_bits, r_frac, e_frac, b, m, s, out_bits):
    lo, hi = 1 << (row_bits - 1), (1 << row_bits) - 1
    r = lo + int(r_frac * (hi - lo))
    e = int(e_frac * ((1 << exp_bits) - 1))
    got = _one(acc, r, e, b, m, s, out_bits, row_bits, exp_bits)
    assert got == ref_row_requant(acc, r, e, b, m, s, out_bits)


def test_row_requant_identity_is_column_requant():
    g = torch.Generator().manual_seed(3)
    acc = torch.randint(-(1 << 20), 1 << 20, (7, 5), generator=g)
    bias = torch.randint(-1000, 1000, (5,), generator=g)
    mult = torch.randint(1 << 14, 1 << 15, (5,), generator=g)
    shift = torch.randint(10, 20, (5,), generator=g)
    one, zero = torch.ones(7, dtype=torch.int64), torch.zeros(7, dtype=torch.int64)
    assert torch.equal(row_requantize(acc, one, zero, bias, mult, shift, row_bits=1),
                       requantize(acc + bias, mult, shift))


def test_row_requant_errors():
    acc = torch.zeros(2, 3, dtype=torch.int64)
    z3 = torch.zeros(3, dtype=torch.int64)
    r, e = torch.tensor([8, 8]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match=r"^row factors r must be in \[8, 15\]"):
        row_requantize(acc, torch.tensor([7, 8]), e, z3, z3, z3)
    with pytest.raises(ValueError, match=r"^row exponents e must be in \[0, 7\]"):
        row_requantize(acc, r, torch.tensor([0, 8]), z3, z3, z3)
    with pytest.raises(ValueError, match=r"^mult must be in \[0, 65535\]$"):
        row_requantize(acc, r, e, z3, z3 + (1 << REQUANT_MULT_BITS), z3)
    with pytest.raises(ValueError, match=r"^t·M must fit 63 bits"):
        big = torch.full((2, 3), 1 << 40, dtype=torch.int64)
        row_requantize(big, torch.tensor([15, 15]), torch.tensor([7, 7]), z3, z3 + 65535, z3)
    with pytest.raises(ValueError, match=r"^acc must be M×N and r, e of length M"):
        row_requantize(acc, torch.tensor([8]), torch.tensor([0]), z3, z3, z3)
    with pytest.raises(ValueError, match=r"^row_bits must be an integer in \[1, 16\], not 0$"):
        row_acc_bits(27, 0)
    assert row_acc_bits(27, 1, 3) == 27 + 1 + 7 + 1


def test_row_factors():
    unit = 0.01
    amax = torch.tensor([0.0, 0.5, 1.27, 1.2701, 50.0, 1e9])
    for rb, eb in ((1, 3), (4, 3), (2, 2)):
        r, e, s = row_factors(amax, unit, rb, eb)
        top = unit * ((1 << rb) - 1) * 2 ** ((1 << eb) - 1)
        for i, a in enumerate(amax.tolist()):
            if a / 127 <= top:
                assert s[i] * 127 >= a - 1e-12           # the row fits
                smaller = [unit * rr * 2 ** ee for rr in range(1 << (rb - 1), 1 << rb)
                           for ee in range(1 << eb) if unit * rr * 2 ** ee < s[i] - 1e-15]
                assert all(v * 127 < a for v in smaller)  # and no smaller scale would
            else:
                assert s[i] == pytest.approx(top)          # saturates: the row clips
        code = pack_row_factor(r, e, rb, eb)
        assert bool((code < (1 << (rb - 1 + eb))).all())
        r2, e2 = unpack_row_factor(code, rb, eb)
        assert torch.equal(r, r2) and torch.equal(e, e2)
    with pytest.raises(ValueError, match=r"^unit must be a positive finite number, not 0$"):
        row_factors(amax, 0)
