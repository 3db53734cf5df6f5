"""Contracts of the individual model stages: registries, shapes, TPS identity/ONNX, blocks, decoders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from onnx_helpers import onnx_and_torch_outputs

from strkit.charset import Charset
from strkit.codecs import AttentionCodec, CTCCodec
from strkit.models.backbones.blocks import BlockSpec, InvertedResidual, SkipBlock, make_divisible
from strkit.models.registry import BACKBONES, DECODERS, RECTIFIERS, SEQUENCES
from strkit.registry import RegistryError

torch.manual_seed(0)

# Small widths: the shapes under test do not depend on them.
SMALL_BACKBONES = {
    "vgg": {"out_channels": 32},
    "resnet": {"out_channels": 32, "layers": [1, 1, 1, 1]},
    "mobilenetv2": {"width_mult": 0.25, "out_channels": 32},
}
# (H', W') for 32×100 and 32×128 inputs, from the layer arithmetic in each docstring.
EXPECTED_HW = {
    "vgg": {100: (1, 24), 128: (1, 31)},
    "resnet": {100: (1, 26), 128: (1, 33)},
    "mobilenetv2": {100: (1, 25), 128: (1, 32)},
}
SMALL_TPS = {"name": "tps", "loc_channels": [8, 8, 8, 8], "loc_hidden": 16}


def test_registries_hold_the_stage_modules():
    assert {"none", "tps"} <= set(RECTIFIERS.names())
    assert {"vgg", "resnet", "mobilenetv2"} <= set(BACKBONES.names())
    assert {"none", "bilstm"} <= set(SEQUENCES.names())
    assert {"ctc", "attention"} <= set(DECODERS.names())
    assert DECODERS.get("ctc").codec_kind == "ctc" and DECODERS.get("attention").codec_kind == "attention"


def test_importing_the_registries_loads_no_stage_module():
    code = ("import sys, strkit.models, strkit.models.registry; "
            "assert not [m for m in sys.modules if m.startswith('strkit.models.') "
            "and m != 'strkit.models.registry'], sorted(sys.modules); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_stage_and_key_are_reported_with_their_path():
    with pytest.raises(RegistryError, match="unknown backbone 'vggg'.*Did you mean 'vgg'"):
        BACKBONES.build({"name": "vggg"}, where="model.backbone", in_channels=1, img_h=32, img_w=100)
    with pytest.raises(RegistryError, match="model.backbone .*unknown key 'out_chanels'"):
        BACKBONES.build({"name": "vgg", "out_chanels": 3}, where="model.backbone", in_channels=1, img_h=32,
                        img_w=100)


# --- backbones ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL_BACKBONES))
@pytest.mark.parametrize("width", [100, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_backbone_output_shape(name, width, channels):
    spec = {"name": name, **SMALL_BACKBONES[name]}
    net = BACKBONES.build(spec, in_channels=channels, img_h=32, img_w=width)
    out = net(torch.randn(2, channels, 32, width))
    assert net.out_hw == EXPECTED_HW[name][width]
    assert tuple(out.shape) == (2, net.out_channels, *net.out_hw) == (2, 32, *EXPECTED_HW[name][width])


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_backbone_rejects_too_small_input(name):
    with pytest.raises(ValueError, match="leaves no feature map"):
        BACKBONES.build({"name": name, **SMALL_BACKBONES[name]}, in_channels=1, img_h=8, img_w=4)


def test_mobilenetv2_pads_small_inputs_to_one_step():
    net = BACKBONES.build({"name": "mobilenetv2", **SMALL_BACKBONES["mobilenetv2"]}, in_channels=1, img_h=8,
                          img_w=4)
    assert net.out_hw == (1, 1) and tuple(net(torch.randn(2, 1, 8, 4)).shape) == (2, 32, 1, 1)


def test_taller_input_keeps_several_rows():
    net = BACKBONES.build({"name": "mobilenetv2", **SMALL_BACKBONES["mobilenetv2"]}, in_channels=1, img_h=64,
                          img_w=100)
    assert net.out_hw == (2, 25)
    assert tuple(net(torch.randn(1, 1, 64, 100)).shape) == (1, 32, 2, 25)


# --- mobilenetv2 blocks ------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,expected", [((1, 1), (16, 50)), ((2, 1), (8, 50)), ((2, 2), (8, 25))])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_inverted_residual_shapes(stride, expected, kernel):
    block = InvertedResidual(16, 16, kernel, 6, stride)
    assert tuple(block(torch.randn(2, 16, 16, 50)).shape) == (2, 16, *expected)
    assert block.use_residual == (stride == (1, 1))


def test_inverted_residual_structure():
    convs = lambda m: [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    expand = InvertedResidual(8, 16, 5, 3, (1, 1))
    assert [c.kernel_size for c in convs(expand)] == [(1, 1), (5, 5), (1, 1)]
    assert convs(expand)[1].groups == 24 and not expand.use_residual  # depthwise; widths differ
    no_expand = InvertedResidual(8, 8, 3, 1, (1, 1))
    assert [c.kernel_size for c in convs(no_expand)] == [(3, 3), (1, 1)] and no_expand.use_residual
    with pytest.raises(ValueError, match="odd"):
        InvertedResidual(8, 8, 4, 6, (1, 1))


def test_skip_block_and_block_specs():
    x = torch.randn(1, 8, 4, 10)
    assert SkipBlock(8, 8)(x) is x
    with pytest.raises(ValueError, match="skip block"):
        SkipBlock(8, 16)
    assert BlockSpec.parse([5, 3, 24, 2, 1]) == BlockSpec("mbconv", 5, 3, 24, (2, 1))
    mapping = {"kernel": 7, "expansion": 6, "out_channels": 40, "stride": [2, 2]}
    assert BlockSpec.parse(mapping) == BlockSpec("mbconv", 7, 6, 40, (2, 2))
    assert BlockSpec.parse("skip").op == "skip"
    assert isinstance(BlockSpec.parse("skip").build(16), SkipBlock)
    with pytest.raises(ValueError, match="expected"):
        BlockSpec.parse([3, 6, 24])
    with pytest.raises(ValueError, match="unknown key"):
        BlockSpec.parse({"kernal": 3})
    assert make_divisible(24 * 0.25) == 8 and make_divisible(32) == 32 and make_divisible(100) == 104


def test_mobilenetv2_block_list_skip_and_width_mult():
    blocks = [[3, 1, 16, 2, 2], "skip", [5, 6, 24, 2, 1], {"op": "skip"}, [7, 3, 32, 2, 1], [3, 6, 32, 2, 1]]
    net = BACKBONES.build({"name": "mobilenetv2", "blocks": blocks, "out_channels": 48}, in_channels=3,
                          img_h=32, img_w=100)
    assert isinstance(net.blocks[1], SkipBlock) and isinstance(net.blocks[3], SkipBlock)
    assert tuple(net(torch.randn(2, 3, 32, 100)).shape) == (2, 48, 1, 25) and net.out_hw == (1, 25)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    half = BACKBONES.build({"name": "mobilenetv2", "blocks": blocks, "out_channels": 48, "width_mult": 0.5},
                           in_channels=3, img_h=32, img_w=100)
    assert count(half) < count(net)
    with pytest.raises(ValueError, match=r"blocks\[1\]"):
        BACKBONES.build({"name": "mobilenetv2", "blocks": [[3, 1, 16, 1, 1], [3, 6]]}, in_channels=1,
                        img_h=32, img_w=100)


# --- rectifiers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [100, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_tps_starts_as_the_identity(width, channels):
    tps = RECTIFIERS.build(SMALL_TPS, img_h=32, img_w=width, in_channels=channels)
    x = torch.rand(2, channels, 32, width) * 2 - 1
    y = tps(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)
    y.sum().backward()
    assert tps.localization.fc2.weight.grad is not None


def test_tps_resamples_to_the_configured_size_and_warps_when_points_move():
    tps = RECTIFIERS.build(SMALL_TPS, img_h=32, img_w=100, in_channels=1)
    assert tuple(tps(torch.randn(2, 1, 48, 160)).shape) == (2, 1, 32, 100)
    with torch.no_grad():
        tps.localization.fc2.bias.mul_(0.5)  # zoom in on the centre
    x = torch.linspace(-1, 1, 100).expand(1, 1, 32, 100)
    y = tps(x)
    assert y.min() > -0.6 and y.max() < 0.6


def test_tps_rejects_odd_fiducials():
    with pytest.raises(ValueError, match="num_fiducial"):
        RECTIFIERS.build({"name": "tps", "num_fiducial": 5}, img_h=32, img_w=100, in_channels=1)


def test_none_rectifier_is_identity():
    x = torch.randn(1, 3, 32, 100)
    assert RECTIFIERS.build("none", img_h=32, img_w=100, in_channels=3)(x) is x


def test_tps_exports_to_onnx_with_runtime_parity():
    tps = RECTIFIERS.build(SMALL_TPS, img_h=32, img_w=100, in_channels=1).eval()
    with torch.no_grad():  # a non-trivial warp
        tps.localization.fc2.weight.normal_(0, 0.05)
    x = torch.rand(3, 1, 32, 100) * 2 - 1
    got, ref = onnx_and_torch_outputs(tps, x)
    assert np.abs(got - ref).max() < 1e-4


# --- sequence ------------------------------------------------------------------------------------------
def test_sequence_modules():
    x = torch.randn(2, 25, 24)
    none = SEQUENCES.build("none", input_size=24)
    assert none(x) is x and none.out_size == 24
    lstm = SEQUENCES.build({"name": "bilstm", "hidden_size": 16, "num_layers": 3}, input_size=24)
    assert lstm.out_size == 16 and tuple(lstm(x).shape) == (2, 25, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lstm(x.bfloat16())
    assert y.dtype == torch.float32
    y.sum().backward()


# --- decoders ------------------------------------------------------------------------------------------
CHARSET = Charset.preset("36_lowercase")


def ctc_decoder(**kw):
    codec = CTCCodec(CHARSET)
    return DECODERS.build({"name": "ctc", **kw}, input_size=16, num_classes=codec.num_classes, max_length=8,
                          blank=codec.blank), codec


def attention_decoder(name: str = "attention", **kw):
    codec = AttentionCodec(CHARSET, 8)
    size = {"hidden_size": 16} if name == "attention" else {"d_model": 16, "num_heads": 2, "ffn_size": 32}
    dec = DECODERS.build({"name": name, **size, **kw}, input_size=16,
                         num_classes=codec.num_classes, max_length=8, bos=codec.bos, eos=codec.eos,
                         pad=codec.pad)
    return dec, codec


def test_ctc_decoder_shapes_and_loss():
    dec, codec = ctc_decoder()
    feats = torch.randn(2, 12, 16)
    logits = dec(feats)
    assert tuple(logits.shape) == (2, 12, 37)
    loss = dec.loss(logits, codec.encode(["abc", "7"]))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    # an impossible target (longer than T) gives 0 instead of inf (zero_infinity)
    assert dec.loss(logits[:, :2], codec.encode(["abc", "abc"])) == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = dec(feats)
        assert low.dtype == torch.bfloat16
        assert dec.loss(low, codec.encode(["abc", "7"])).dtype == torch.float32


def test_label_smoothing_of_every_decoder_against_hand_computed_values():
    """CTC: (1 − ε)·CTC + ε·KL(uniform ‖ p) over the frames; cross-entropy decoders: torch's smoothed
    cross-entropy. Uniform frames add nothing; a bad ε is named."""
    from strkit.models.decoders.smoothing import uniform_kl

    dec, codec = ctc_decoder()
    smooth, _ = ctc_decoder(label_smoothing=0.2)
    targets = codec.encode(["ab", "7"])
    flat = torch.zeros(2, 6, 37)  # uniform frames: the KL term is 0
    assert smooth.loss(flat, targets) == pytest.approx(0.8 * dec.loss(flat, targets).item())
    # one frame: p = softmax([log 3, 0, 0]) = [3/5, 1/5, 1/5]; KL(u || p) = log(1/3) - mean(log p)
    p = torch.tensor([0.6, 0.2, 0.2])
    by_hand = float(torch.log(torch.tensor(1 / 3)) - torch.log(p).mean())
    assert uniform_kl(p.log().view(1, 1, 3)) == pytest.approx(by_hand, rel=1e-6)
    logits = torch.randn(2, 6, 37)
    kl = uniform_kl(logits.log_softmax(-1))
    assert smooth.loss(logits, targets) == pytest.approx(0.8 * dec.loss(logits, targets).item() + 0.2 * kl.item(),
                                                          rel=1e-5)
    att, acodec = attention_decoder(label_smoothing=0.1)
    tokens = acodec.encode(["ab", "c"])
    logits = torch.randn(2, 9, 39)
    gold = tokens["tokens"][:, 1:].reshape(-1)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 39), gold, ignore_index=att.pad,
                                                 label_smoothing=0.1)
    assert att.loss(logits, tokens) == pytest.approx(expected.item())
    assert att.loss(logits, tokens) != pytest.approx(attention_decoder()[0].loss(logits, tokens).item())
    vl, _ = attention_decoder("iterative_vl", label_smoothing=0.1, iterations=0)
    assert vl.label_smoothing == 0.1
    for build, name in ((ctc_decoder, "ctc"), (attention_decoder, "attention"),
                        (lambda **kw: attention_decoder("iterative_vl", **kw), "iterative_vl")):
        for bad in (1.0, -0.1):
            with pytest.raises(ValueError, match=f"decoder '{name}': label_smoothing must be in"):
                build(label_smoothing=bad)


def test_ctc_beam_and_lexicon_decoding(tmp_path):
    dec, codec = ctc_decoder(beam_width=4)
    # logits spelling "cat" with one doubtful frame
    ids = codec.encode(["cat"])["targets"].tolist()
    logits = torch.full((1, 7, 37), -4.0)
    for t, c in enumerate([ids[0], 0, ids[1], 0, ids[2], 0, 0]):
        logits[0, t, c] = 4.0
    greedy = codec.decode(logits)[0]
    beam = dec.decode(logits, codec)[0]
    assert beam.text == greedy.text == "cat"
    assert len(beam.char_probs) == 3 and beam.confidence == pytest.approx(np.prod(beam.char_probs))
    assert beam.char_probs == pytest.approx(greedy.char_probs, rel=1e-5)
    lex = tmp_path / "words.txt"
    lex.write_text("Cart\ncut\n\ncot\n")
    lexdec, _ = ctc_decoder(lexicon=str(lex))
    pred = lexdec.decode(logits, codec)[0]
    assert pred.text in {"cart", "cut", "cot"} and len(pred.char_probs) == len(pred.text)
    # with a candidate prefilter smaller than the lexicon the closest word still wins
    many = [f"x{i}yz" for i in range(300)] + ["cot", "cat"]
    assert ctc_decoder(lexicon=many, lexicon_candidates=5)[0].decode(logits, codec)[0].text == "cat"
    with pytest.raises(FileNotFoundError, match="lexicon"):
        ctc_decoder(lexicon=str(tmp_path / "missing.txt"))


def _spelling(codec: CTCCodec, text: str, frames: int = 12) -> torch.Tensor:
    """1×T×K logits that spell ``text`` with a blank after every character (T = ``frames``)."""
    ids = codec.encode([text])["targets"].tolist()
    logits = torch.full((1, frames, codec.num_classes), -4.0)
    path = [c for i in ids for c in (i, codec.blank)]
    for t in range(frames):
        logits[0, t, path[t] if t < len(path) else codec.blank] = 4.0
    return logits


def test_ctc_lexicon_matches_any_case_unless_told_otherwise():
    from strkit.models.decoders.ctc import case_forms

    mixed = Charset.preset("94_full")
    assert case_forms("coffee", mixed) == ["coffee", "Coffee", "COFFEE"]
    assert case_forms("iPhone", mixed) == ["iPhone", "iphone", "Iphone", "IPHONE"]
    assert case_forms("COFFEE", CHARSET) == ["coffee"]  # a one-case charset folds the forms into one
    codec = CTCCodec(mixed)
    logits = _spelling(codec, "COFFEE")
    build = {"input_size": 16, "num_classes": codec.num_classes, "max_length": 8, "blank": codec.blank}
    any_case = DECODERS.build({"name": "ctc", "lexicon": ["tea", "coffee"]}, **build)
    pred = any_case.decode(logits, codec)[0]
    assert pred.text == "COFFEE" and pred.confidence > 0.5  # the form read, with its own probability
    exact = DECODERS.build({"name": "ctc", "lexicon": ["tea", "coffee"], "lexicon_any_case": False}, **build)
    read = exact.decode(logits, codec)[0]  # only the words as written: both poor matches of "COFFEE"
    assert read.text in {"tea", "coffee"} and read.confidence < 1e-3
    # the candidate prefilter ignores case: "COFFEE" is the closest word of a long lower-case list
    many = [f"x{i}yz" for i in range(300)] + ["toffee", "coffee"]
    pre = DECODERS.build({"name": "ctc", "lexicon": many, "lexicon_candidates": 2}, **build)
    assert pre.decode(logits, codec)[0].text == "COFFEE"
    # a one-case model is unchanged: the words are folded to its charset
    low = CTCCodec(CHARSET)
    dec = DECODERS.build({"name": "ctc", "lexicon": ["Tea", "COFFEE"]}, input_size=16, num_classes=low.num_classes,
                         max_length=8, blank=low.blank)
    assert dec.decode(_spelling(low, "coffee"), low)[0].text == "coffee"


def test_attention_decoder_teacher_forcing_and_greedy():
    dec, codec = attention_decoder()
    feats = torch.randn(2, 12, 16)
    targets = codec.encode(["abc", "hello"])
    dec.train()
    forced = dec(feats, targets)
    assert tuple(forced.shape) == (2, 9, 39)
    loss = dec.loss(forced, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # teacher forcing reads the targets
    other = codec.encode(["xyz", "world"])
    assert not torch.allclose(dec(feats, other), forced)
    dec.eval()
    with torch.no_grad():
        greedy = dec(feats, None)
        assert tuple(greedy.shape) == (2, 9, 39)
        assert torch.equal(dec(feats, other), greedy)  # targets are ignored at inference
        # greedy feeds back its own argmax (BOS/PAD excluded): teacher-forcing those tokens reproduces it
        fed = (greedy + dec.feed_mask).argmax(-1)
        tokens = torch.cat([torch.full((2, 1), codec.bos), fed], dim=1)
        dec.train()
        torch.testing.assert_close(dec(feats, {"tokens": tokens}), greedy)
    assert len(dec.decode(greedy, codec)) == 2
    with pytest.raises(ValueError, match="max_length"):
        dec(feats, {"tokens": tokens[:, :5]})


def test_attention_loss_ignores_padding():
    dec, codec = attention_decoder()
    targets = codec.encode(["ab", "c"])
    logits = torch.randn(2, 9, 39)
    scrambled = logits.clone()
    scrambled[1, 2:] = torch.randn(7, 39)  # steps after "c", EOS are PAD for sample 1
    scrambled[0, 3:] = torch.randn(6, 39)
    assert dec.loss(logits, targets) == pytest.approx(dec.loss(scrambled, targets).item())
