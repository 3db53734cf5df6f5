"""The composed recognition model: configs, parameter counts, every stage combination, training signal,
bf16 autocast, prediction."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from strkit.charset import Charset
from strkit.config import ConfigError, ModelConfig, load_config
from strkit.greedy_decoding import Prediction
from strkit.models import ModelOutput, RecognitionModel, build_model
from strkit.registry import RegistryError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- parameter counts from the layer shapes of Baek et al. 2019 (independent of the module code) ---------
def conv(c_in: int, c_out: int, k: int, bias: bool = True, bn: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0) + (2 * c_out if bn else 0)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def bilstm(n_in: int, hidden: int) -> int:
    return 2 * (4 * hidden * (n_in + hidden) + 8 * hidden)  # two directions, W_ih + W_hh + two biases


SEQUENCE = bilstm(512, 256) + linear(512, 256) + bilstm(256, 256) + linear(512, 256)  # 2,892,288


def vgg_params() -> int:  # 5,549,824
    return (conv(1, 64, 3) + conv(64, 128, 3) + conv(128, 256, 3) + conv(256, 256, 3)
            + conv(256, 512, 3, bias=False, bn=True) + conv(512, 512, 3, bias=False, bn=True)
            + conv(512, 512, 2))


def resnet_params() -> int:  # 44,263,904
    def block(c_in: int, c_out: int) -> int:
        down = conv(c_in, c_out, 1, False, True) if c_in != c_out else 0
        return conv(c_in, c_out, 3, False, True) + conv(c_out, c_out, 3, False, True) + down

    c3 = lambda c: conv(c, c, 3, False, True)  # noqa: E731
    return (conv(1, 32, 3, False, True) + conv(32, 64, 3, False, True)
            + block(64, 128) + c3(128)
            + block(128, 256) + block(256, 256) + c3(256)
            + block(256, 512) + 4 * block(512, 512) + c3(512)
            + 3 * block(512, 512) + 2 * conv(512, 512, 2, False, True))


def tps_params() -> int:  # 1,692,392
    return (conv(1, 64, 3, False, True) + conv(64, 128, 3, False, True) + conv(128, 256, 3, False, True)
            + conv(256, 512, 3, False, True) + linear(512, 256) + linear(256, 2 * 20))


def attention_params(k: int) -> int:
    """i2h (no bias), h2h, score (no bias), LSTMCell(256 + K one-hot -> 256), generator."""
    lstm_cell = 4 * 256 * (256 + k) + 4 * 256 * 256 + 8 * 256
    return 256 * 256 + linear(256, 256) + 256 + lstm_cell + linear(256, k)


CRNN_EXPECTED = vgg_params() + SEQUENCE + linear(256, 37)  # 8,451,621
TRBA_EXPECTED = tps_params() + resnet_params() + SEQUENCE + attention_params(36 + 3)  # 49,556,463
TRBA_BENCHMARK = tps_params() + resnet_params() + SEQUENCE + attention_params(36 + 2)  # [GO]/[s]: 49,555,182


def load_model(name: str, **kw) -> RecognitionModel:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    return build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels, **kw)


def test_crnn_matches_the_benchmark_architecture():
    model = load_model("crnn")
    assert model.pipeline == "none-vgg-bilstm-ctc"
    assert n_params(model.backbone) == vgg_params() == 5_549_824
    assert n_params(model.sequence) == SEQUENCE == 2_892_288
    assert n_params(model) == CRNN_EXPECTED == 8_451_621
    assert abs(n_params(model) / 8.5e6 - 1) < 0.01  # paper: 8.5M
    assert model.backbone.out_hw == (1, 24)
    assert model.arch is None  # only searched backbones carry an architecture


def test_trba_matches_the_benchmark_architecture():
    model = load_model("trba")
    assert model.pipeline == "tps-resnet-bilstm-attention"
    assert n_params(model.rectifier) == tps_params() == 1_692_392
    assert n_params(model.backbone) == resnet_params() == 44_263_904
    assert n_params(model) == TRBA_EXPECTED == 49_556_463
    # the benchmark has 2 special tokens instead of our 3: 1,281 parameters fewer, still 49.6M
    assert TRBA_EXPECTED - TRBA_BENCHMARK == 4 * 256 + 257
    assert abs(TRBA_BENCHMARK / 49.6e6 - 1) < 0.01 and abs(n_params(model) / 49.6e6 - 1) < 0.01
    assert model.backbone.out_hw == (1, 26)


def test_mobilenet_configs():
    mbv2 = load_model("mbv2-ctc")
    assert mbv2.pipeline == "none-mobilenetv2-bilstm-ctc"
    assert 4.0e6 < n_params(mbv2) < 5.0e6  # aimed at ~4.5M; measured 4,574,437
    assert mbv2.backbone.out_hw == (1, 25)
    attn = load_model("tps-mbv2-attn")
    assert attn.pipeline == "tps-mobilenetv2-bilstm-attention"
    assert n_params(attn.backbone) == n_params(mbv2.backbone)
    assert n_params(attn) == n_params(mbv2) - linear(256, 37) + tps_params() + attention_params(39)


# --- every combination ----------------------------------------------------------------------------------
SMALL = {
    "rectifier": {"none": {}, "tps": {"loc_channels": [8, 8, 8, 8], "loc_hidden": 16}},
    "backbone": {"vgg": {"out_channels": 32}, "resnet": {"out_channels": 32, "layers": [1, 1, 1, 1]},
                 "mobilenetv2": {"width_mult": 0.25, "out_channels": 32}},
    "sequence": {"none": {}, "bilstm": {"hidden_size": 16}},
    "decoder": {"ctc": {}, "attention": {"hidden_size": 16}},
}
STEPS = {"vgg": 24, "resnet": 26, "mobilenetv2": 25}


def small_config(rectifier: str, backbone: str, sequence: str, decoder: str, max_length: int = 8,
                 **decoder_kw) -> ModelConfig:
    def spec(slot: str, name: str) -> dict:
        return {"name": name, **SMALL[slot][name]}

    return ModelConfig(charset="36_lowercase", max_length=max_length, rectifier=spec("rectifier", rectifier),
                       backbone=spec("backbone", backbone), sequence=spec("sequence", sequence),
                       decoder={**spec("decoder", decoder), **decoder_kw})


@pytest.mark.parametrize("combo", list(itertools.product(*(sorted(SMALL[s]) for s in SMALL))),
                         ids="-".join)
def test_every_combination_builds_and_trains(combo):
    torch.manual_seed(0)
    rect, backbone, seq, dec = combo
    model = build_model(small_config(*combo), 32, 100, 1)
    images = torch.rand(2, 1, 32, 100) * 2 - 1
    out = model(images, model.encode(["word", "a1"]))
    assert isinstance(out, ModelOutput)
    expected_len = STEPS[backbone] if dec == "ctc" else 8 + 1
    assert tuple(out.logits.shape) == (2, expected_len, model.codec.num_classes)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert model(images).loss is None


@pytest.mark.parametrize("combo", [("tps", "mobilenetv2", "bilstm", "attention"),
                                   ("none", "vgg", "bilstm", "ctc"), ("none", "resnet", "none", "ctc")],
                         ids="-".join)
def test_wide_rgb_inputs(combo):
    model = build_model(small_config(*combo), 32, 128, 3)
    out = model(torch.randn(2, 3, 32, 128), model.encode(["ab", "cd"]))
    steps = {"vgg": 31, "resnet": 33, "mobilenetv2": 32}[combo[1]] if combo[3] == "ctc" else 9
    assert tuple(out.logits.shape) == (2, steps, model.codec.num_classes)
    out.loss.backward()


# --- training signal --------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["ctc", "attention"])
def test_loss_decreases_when_overfitting_a_tiny_batch(decoder):
    torch.manual_seed(0)
    cfg = small_config("none", "mobilenetv2", "bilstm", decoder, max_length=6)
    blocks = [[3, 1, 16, 2, 2], [3, 4, 24, 2, 1], [3, 4, 32, 2, 1], [3, 4, 48, 2, 1]]  # 32x100 -> 1x25
    cfg.backbone = {"name": "mobilenetv2", "blocks": blocks, "stem_channels": 16, "out_channels": 64}
    cfg.sequence = {"name": "bilstm", "hidden_size": 64}
    model = build_model(cfg, 32, 100, 1)
    images = torch.rand(2, 1, 32, 100) * 2 - 1
    targets = model.encode(["cat", "road7"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model(images, targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0], losses  # measured: CTC 20.5 -> 1.5, attention 3.7 -> 1.9


# --- precision and memory format ------------------------------------------------------------------------
def test_crnn_bf16_autocast_channels_last_forward_backward():
    torch.manual_seed(0)
    model = load_model("crnn").to(memory_format=torch.channels_last)
    images = (torch.rand(2, 1, 32, 100) * 2 - 1).contiguous(memory_format=torch.channels_last)
    targets = model.encode(["hello", "world"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, targets)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model.predict(images)
    assert len(preds) == 2


def test_attention_model_under_bf16_autocast():
    model = build_model(small_config("tps", "mobilenetv2", "bilstm", "attention"), 32, 100, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 32, 100), model.encode(["ab", "c"]))
    out.loss.backward()
    assert out.logits.dtype == torch.float32


# --- prediction and errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder,kw", [("ctc", {}), ("ctc", {"beam_width": 3}),
                                        ("ctc", {"lexicon": ["cat", "dog"]}), ("attention", {})])
def test_predict(decoder, kw):
    model = build_model(small_config("none", "mobilenetv2", "bilstm", decoder, **kw), 32, 100, 1)
    model.train()
    preds = model.predict(torch.randn(3, 1, 32, 100))
    assert model.training  # mode restored
    assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
    for p in preds:
        assert len(p.char_probs) == len(p.text) and 0.0 <= p.confidence <= 1.0
        assert set(p.text) <= set(model.charset.chars)
        if "lexicon" in kw:
            assert p.text in kw["lexicon"]


def test_charset_override_and_codec_kind():
    model = build_model(small_config("none", "vgg", "none", "ctc"), 32, 100, 1,
                        charset=Charset.preset("62_mixed"))
    assert model.codec.num_classes == 63 and model.decoder.fc.out_features == 63
    attn = build_model(small_config("none", "vgg", "none", "attention"), 32, 100, 1)
    assert attn.codec.num_classes == 39
    assert (attn.decoder.bos, attn.decoder.eos, attn.decoder.pad) == (1, 0, 2)


def test_config_errors_name_the_slot():
    cfg = small_config("none", "mobilenetv2", "none", "ctc")
    cfg.backbone = {"name": "mobilenetv2", "blocks": [[3, 6, 16]]}
    with pytest.raises(ConfigError, match=r"model.backbone .*blocks\[0\]"):
        build_model(cfg, 32, 100, 1)
    cfg.backbone = {"name": "mobilenetv2", "width": 2}
    with pytest.raises(RegistryError, match="model.backbone .*unknown key 'width'"):
        build_model(cfg, 32, 100, 1)
    cfg.backbone = {"name": "vgg"}
    cfg.decoder = {"name": "ctc", "blank": 3}
    with pytest.raises(RegistryError, match="set by the pipeline"):
        build_model(cfg, 32, 100, 1)
    cfg.decoder = {"name": "transformer"}
    with pytest.raises(RegistryError, match="unknown decoder 'transformer'"):
        build_model(cfg, 32, 100, 1)


# --- training aids that leave the inference architecture unchanged ------------------------------------
def test_aux_ctc_adds_a_training_only_loss():
    torch.manual_seed(0)
    cfg = small_config("none", "vgg", "bilstm", "ctc")
    plain = build_model(cfg, 32, 100, 1)
    cfg.aux_ctc = 0.5
    aux = build_model(cfg, 32, 100, 1)
    assert plain.aux_head is None and isinstance(aux.aux_head, torch.nn.Linear)
    aux.load_state_dict({**plain.state_dict(), **{f"aux_head.{k}": v for k, v in aux.aux_head.state_dict().items()}})
    images, targets = torch.randn(3, 1, 32, 100), aux.encode(["ab", "cat", "x"])
    aux.eval(), plain.eval()  # inference: the head is unused, outputs and loss are the plain model's
    with torch.no_grad():
        assert torch.allclose(aux(images, targets).loss, plain(images, targets).loss, atol=1e-5)
        assert torch.equal(aux(images).logits, plain(images).logits)
        aux_loss = aux.decoder.loss(aux.aux_head(aux.features(images)), targets)
    plain.train(), aux.train()
    for m in (plain, aux):  # no BN statistics updates, so that both see the same features
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
    main = plain(images, targets).loss
    total = aux(images, targets).loss
    assert torch.allclose(total, main + 0.5 * aux_loss, atol=1e-4) and total > main
    total.backward()
    assert aux.aux_head.weight.grad is not None and aux.aux_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("decoder", ["attention", "iterative_vl"])
def test_aux_ctc_on_a_non_ctc_decoder_uses_its_own_ctc_targets(decoder):
    from strkit.models.decoders.ctc import ctc_loss

    torch.manual_seed(0)
    cfg = small_config("none", "vgg", "none", "attention")
    if decoder == "iterative_vl":
        cfg.decoder = {"name": "iterative_vl", "d_model": 16, "num_heads": 2, "ffn_size": 32, "encoder_layers": 1,
                       "lm_layers": 1, "iterations": 2, "key_channels": 8}
    plain = build_model(cfg, 32, 100, 1)
    cfg.aux_ctc = 0.25
    aux = build_model(cfg, 32, 100, 1)
    assert aux.aux_codec is not None and aux.aux_head.out_features == len(aux.charset) + 1
    assert aux.num_parameters() == plain.num_parameters() < aux.num_parameters(inference=False)
    aux.load_state_dict({**plain.state_dict(), **{f"aux_head.{k}": v for k, v in aux.aux_head.state_dict().items()}})
    labels = ["ab", "cat", "x"]
    targets = aux.encode(labels)
    ctc_targets = aux.aux_codec.encode(labels)
    assert torch.equal(targets["aux_ctc.target_lengths"], ctc_targets["target_lengths"])
    assert set(plain.encode(labels)) == {k for k in targets if not k.startswith("aux_ctc.")}
    images = torch.randn(3, 1, 32, 100)
    aux.eval(), plain.eval()  # batch-norm statistics frozen and dropout off: both see the same features
    with torch.no_grad():
        assert torch.allclose(aux(images, targets).loss, plain(images, plain.encode(labels)).loss, atol=1e-5)
        expected_aux = ctc_loss(aux.aux_head(aux.features(images)), ctc_targets)
        aux.training = True  # the auxiliary loss is added in training mode only; no module is switched
        total = aux(images, targets).loss
        aux.training = False
        assert torch.allclose(total, plain(images, plain.encode(labels)).loss + 0.25 * expected_aux, atol=1e-4)
        aux.train()
        with pytest.raises(ValueError, match="auxiliary CTC targets"):
            aux(images, plain.encode(labels))


def test_aux_ctc_must_not_be_negative():
    cfg = small_config("none", "vgg", "none", "ctc")
    cfg.aux_ctc = -1.0
    with pytest.raises(ConfigError, match="model.aux_ctc: must be >= 0"):
        build_model(cfg, 32, 100, 1)


def test_vgg_batch_norm_everywhere_keeps_the_layer_shapes():
    from strkit.models.backbones.vgg import VGGBackbone

    ref, bn = VGGBackbone(1, 32, 100), VGGBackbone(1, 32, 100, batch_norm="all")
    assert n_params(bn) - n_params(ref) == 704  # 4 × (2c BN - c bias) for c = 64, 128, 256, 256
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 6
    assert bn(torch.randn(2, 1, 32, 100)).shape == ref(torch.randn(2, 1, 32, 100)).shape == (2, 512, 1, 24)
    with pytest.raises(ValueError, match="batch_norm must be 'reference' or 'all'"):
        VGGBackbone(1, 32, 100, batch_norm="some")


def test_bilstm_initialisations():
    from strkit.models.sequence.bilstm import BidirectionalLSTM

    torch.manual_seed(0)
    layer = BidirectionalLSTM(12, 8, 8)  # orthogonal by default
    w_hh = layer.rnn.weight_hh_l0
    for gate in range(4):
        block = w_hh[gate * 8:(gate + 1) * 8]
        assert torch.allclose(block @ block.T, torch.eye(8), atol=1e-5)
    bias = layer.rnn.bias_ih_l0 + layer.rnn.bias_hh_l0
    assert torch.allclose(bias[8:16], torch.full((8,), 0.5)) and bias[:8].abs().sum() == 0
    torch_init = BidirectionalLSTM(12, 8, 8, init="torch")
    assert torch_init.rnn.bias_ih_l0.abs().sum() > 0
    assert n_params(torch_init) == n_params(layer)
    with pytest.raises(ValueError, match="init must be 'orthogonal' or 'torch'"):
        BidirectionalLSTM(12, 8, 8, init="zeros")


def test_parameter_count_leaves_the_training_only_head_out():
    cfg = small_config("none", "vgg", "bilstm", "ctc")
    cfg.aux_ctc = 1.0
    model = build_model(cfg, 32, 100, 1)
    head = n_params(model.aux_head)
    assert head == linear(32, 37)
    assert model.num_parameters() == n_params(model) - head
    assert model.num_parameters(inference=False) == n_params(model)
