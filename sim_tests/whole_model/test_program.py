"""The whole-model compiler and runtime, end to end on the simulated device.

A small random BERT-style encoder (2 layers, 2 heads of 16, MLP 32 → 64 → 32, fixed seed) is
compiled for a configuration with a linear and a softmax attention unit, whose ``max_k`` (32) is
below the MLP's second layer's K (64), so K chunks and weight tiles are exercised. The run on
the device must equal the golden path (:func:`amaformer.gen.model.exact.exact_forward` with the
integer golden models of every unit) bit for bit, and land close to float PyTorch; bad inputs
get one-line errors.
"""

import pytest
import torch

from amaformer.gen.config import AcceleratorConfig, AttentionConfig, LinearConfig
from amaformer.gen.model.exact import exact_forward, reference
from amaformer.gen.program import ProgramError, compile_program, program_cycles
from amaformer.host import Device
from amaformer.host.runtime import run_program

from conftest import needs_verilator, sim_transport

LIN = LinearConfig(lanes=2, max_k=32, max_n=64, max_m=64, weight_depth=256)
ATT = AttentionConfig(mode="softmax", heads=2, head_dim=16, max_tokens=12, lanes=2,
                      enabled=True)
CFG = AcceleratorConfig(linear=LIN, attention=ATT)


def tiny_bert(seed=0):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32,
                     attn_implementation="eager")
    return BertModel(cfg, add_pooling_layer=False).to(torch.float64).eval()


def sentences(n, seed, lo=4, hi=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 64, (int(torch.randint(lo, hi + 1, (1,), generator=g)),),
                          generator=g) for _ in range(n)]


def compiled_tiny_bert(config):
    """The tiny BERT compiled for ``config`` (calibrated on 6 seeded sentences)."""
    return compile_program(tiny_bert(), config, sentences(6, 1), max_tokens=12)


def verilator_device(config):
    """The Verilator device of ``config`` with the memories these tests use."""
    tr = sim_transport(config, "verilator", timeout_cycles=300, act_depth=4096,
                       out_depth=2048)
    return Device(tr, timeout=0.05, retries=0, expect=config)


@pytest.fixture(scope="module")
def program():
    return compiled_tiny_bert(CFG)


@pytest.fixture(scope="module")
def dev():
    return verilator_device(CFG)


def test_schedule_places_every_linear_and_attention_on_device(program):
    where = program.placement()
    assert where["linear"] == ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
    assert where["attention"] == ["attention"]
    assert "activation" in where["host"]
    ffn_out = program.graph.layers[0].ffn_out.name
    assert program.compiled.ops[ffn_out].k_chunks == ((0, 32), (32, 64))
    tiles = program.tiles(ffn_out)
    assert {(k0, k1) for k0, k1, *_ in tiles} == {(0, 32), (32, 64)}
    assert all(words <= LIN.weight_depth for *_, words in tiles)


@needs_verilator
def test_device_run_equals_golden_bit_for_bit(program, dev):
    ids = sentences(3, 7)
    res = run_program(program, dev, ids)
    hidden, layers, _ = exact_forward(program.compiled, ids)
    for got, want in zip(res.hidden, hidden):
        assert torch.equal(got, want)
    for got, want in zip(res.layers, layers):
        assert torch.equal(got, want)
    # the trace counts real work: every layer ran 6 linear ops (2 jobs for ffn_out's K) and one
    # attention per sentence, and moved bytes both ways
    for t in res.trace:
        assert t.attention_jobs == 3
        assert t.linear_cycles > 0 and t.attention_cycles > 0
        assert t.bytes_to_device > t.bytes_from_device > 0
        assert t.linear_macs == sum(len(i) for i in ids) * (4 * 32 * 32 + 2 * 32 * 64)
    # the units' cycle models composed over the program predict every layer's cycles exactly
    model = program_cycles(program, [len(i) for i in ids], act_depth=4096, out_depth=2048)
    assert [t.linear_cycles for t in res.trace] == [c["linear"] for c in model]
    assert [t.attention_cycles for t in res.trace] == [c["attention"] for c in model]
    # and lands close to float PyTorch
    g = program.graph
    for emb, i in zip(res.embeddings, ids):
        ref = reference(g, i)[0]
        assert torch.nn.functional.cosine_similarity(emb, ref, dim=0) > 0.98


def test_memory_images_are_packed_at_compile_time(program):
    """Every weight tile's images are the unit's packing of the op's compiled integers (what
    the hardware reads), and the jobs cover every row and column with allocated addresses."""
    from amaformer.hdl.linear_layout import pack_engine_weights, pack_requant_params
    for op in program.graph.layers[1].linear_ops:
        ql, tiles = program.compiled.ops[op.name], program.linear_tiles(op.name)
        chunk_w = {(k0, k1): (w, b, mu, sh) for k0, k1, w, b, mu, sh in ql.chunks()}
        assert {(t.k0, t.k1) for t in tiles} == set(ql.k_chunks)
        for t in tiles:
            w, b, mu, sh = chunk_w[(t.k0, t.k1)]
            assert t.weight_words == tuple(pack_engine_weights("mul", w[:, t.n0:t.n1],
                                                               LIN.lanes, 8))
            assert t.param_words == tuple(pack_requant_params(b[t.n0:t.n1], mu[t.n0:t.n1],
                                                              sh[t.n0:t.n1]))
            assert len(t.weight_words) <= LIN.weight_depth
        jobs = program.linear_jobs(op.name, 37, act_depth=4096, out_depth=2048)
        for (k0, k1), chunk_jobs in jobs.items():
            covered = torch.zeros(37, op.out_features, dtype=torch.int64)
            for j in chunk_jobs:
                t = tiles[j.tile]
                assert (t.k0, t.k1) == (k0, k1)
                assert j.descriptor == dict(m=j.r1 - j.r0, k=k1 - k0, n=t.n1 - t.n0,
                                            x_addr=0, y_addr=0)
                covered[j.r0:j.r1, t.n0:t.n1] += 1
            assert torch.equal(covered, torch.ones_like(covered))
    ly = program.graph.layers[0]
    assert program.attention_layout(0, 5) == dict(
        q_addr=0, k_addr=ly.heads * 5 * ly.head_dim, v_addr=2 * ly.heads * 5 * ly.head_dim,
        mask_addr=3 * ly.heads * 5 * ly.head_dim, o_addr=0)


@needs_verilator
def test_runtime_writes_the_programs_images_and_descriptors(program, dev, monkeypatch):
    """The runtime sends the compiled images and descriptors as they are: every weight and
    parameter write and every linear RUN, in order, equals the program's."""
    from amaformer.host.linear import LinearDriver
    sent = []
    real_write, real_run = LinearDriver.write_space, LinearDriver.run_descriptor

    def write_space(self, name, words, word_bytes, addr=0):
        sent.append((name, tuple(int(w) for w in words), addr))
        return real_write(self, name, words, word_bytes, addr)

    def run_descriptor(self, values, **kw):
        sent.append(("RUN", dict(values)))
        return real_run(self, values, **kw)

    monkeypatch.setattr(LinearDriver, "write_space", write_space)
    monkeypatch.setattr(LinearDriver, "run_descriptor", run_descriptor)
    ids = sentences(2, 5)
    m = sum(len(i) for i in ids)
    run_program(program, dev, ids)
    want = []
    for step in program.schedule:
        if step.where != "linear":
            continue
        tiles = program.linear_tiles(step.module)
        for chunk_jobs in program.linear_jobs(step.module, m, act_depth=dev.info.act_depth,
                                              out_depth=dev.info.out_depth).values():
            loaded = None
            for j in chunk_jobs:
                if j.tile != loaded:
                    want += [("weights", tiles[j.tile].weight_words, 0),
                             ("params", tiles[j.tile].param_words, 0)]
                    loaded = j.tile
                want.append(("RUN", j.descriptor))
    assert sent == want


@needs_verilator
def test_back_to_back_runs_repeat_exactly(program, dev):
    ids = sentences(2, 11)
    a = run_program(program, dev, ids)
    b = run_program(program, dev, ids)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden, b.hidden))
    assert [t.cycles for t in a.trace] == [t.cycles for t in b.trace]


def test_errors_are_one_line(program):
    no_att = AcceleratorConfig(linear=LIN)
    with pytest.raises(ProgramError, match=r"no softmax attention unit") as e:
        compile_program(tiny_bert(), no_att, sentences(2, 1))
    assert "\n" not in str(e.value)
    small = AttentionConfig(mode="softmax", heads=2, head_dim=8, max_tokens=12, enabled=True)
    with pytest.raises(ProgramError, match=r"layer 0 has 2 heads of 16; the attention unit "
                                           r"takes at most 2 heads of 8"):
        compile_program(tiny_bert(), AcceleratorConfig(linear=LIN, attention=small),
                        sentences(2, 1))
    with pytest.raises(ProgramError, match=r"cannot|not"):
        compile_program(torch.nn.Sequential(torch.nn.Linear(4, 4)), CFG, sentences(2, 1))
    with pytest.raises(ValueError, match=r"sentence 0 has 13 tokens; this device takes 1 to 12"):
        run_program(program, object(), [torch.arange(1, 14)])


def test_cli_refuses_a_configuration_without_attention(tmp_path, capsys):
    from amaformer.gen.cli import main
    from amaformer.gen.config import save_config
    cfg = tmp_path / "c.toml"
    save_config(AcceleratorConfig(), cfg)
    assert main(["run", "--model", "minilm", "--config", str(cfg), "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("amaformer: error: cannot compile the model for this configuration: the "
                   "configuration has no softmax attention unit ([attention] enabled = true, "
                   "mode = \"softmax\"); the program needs one")
    assert main(["run", "hello"]) == 2
    assert "sentences are taken with --model only" in capsys.readouterr().err


@pytest.mark.slow
@needs_verilator
def test_minilm_whole_model_on_device():
    """all-MiniLM-L6-v2, all six layers, one real sentence on the simulated device of the
    whole-model configuration: bit-exact with the golden path, cosine ≥ 0.995 against float."""
    from amaformer.gen.model.minilm import load_minilm, load_sentences
    from amaformer.gen.minilm_presets import minilm_config
    lm = load_minilm()
    calib, held = load_sentences()
    cfg = minilm_config()
    program = compile_program(lm.model, cfg, [lm.ids(s) for s in calib])
    dev = Device(sim_transport(cfg, "verilator"), timeout=20, retries=0, expect=cfg)
    ids = [lm.ids("The printer on the third floor is jammed again.")]
    res = run_program(program, dev, ids)
    hidden, _, _ = exact_forward(program.compiled, ids)
    assert torch.equal(res.hidden[0], hidden[0])
    ref = reference(program.graph, ids[0])[0]
    assert torch.nn.functional.cosine_similarity(res.embeddings[0], ref, dim=0) >= 0.995
