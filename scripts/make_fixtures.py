#!/usr/bin/env python3
"""Regenerate the tiny reference checkpoints and outputs under tests/fixtures/models/.

    /work/pyenv/bin/python scripts/make_fixtures.py

Everything is built locally with random (seeded, then perturbed) weights: no hub access.
All computation is float32 on CPU, eval mode, under torch.no_grad(). The PIL backend of the
image processors is used throughout (the parity target). Running it twice gives byte-identical
files (checked with --check-determinism, which regenerates into a temp dir and compares).

Outputs (see tests/fixtures/models/README.md, which this script also writes):
  <ckpt>/                      save_pretrained model + processor, reference.safetensors,
                               reference.json, keys.json, state_dict_keys.json
  legacy/<ckpt>/               transformers-4.x key layout copies of the CLIP-tower checkpoints
  towers/{vit,vit-classifier,bert,roberta,clip}/
  compose/                     from_vision_text_pretrained key lists, configs, outputs
  init/                        tower configs and key lists of VisionTextDualEncoderModel(config)
  images.json                  how Pillow / load_image decodes each test photo
Also writes tests/fixtures/images/camera.bmp (a BMP copy of camera.png).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BeitConfig,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
    DeiTConfig,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
    VisionTextDualEncoderProcessor,
    XLMRobertaConfig,
    XLMRobertaTokenizer,
)
from transformers.image_utils import (  # noqa: E402
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
    load_image,
)
from transformers.models.beit.image_processing_pil_beit import BeitImageProcessorPil  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil  # noqa: E402
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "images"

# --------------------------------------------------------------------------------------------
# Shared constants
# --------------------------------------------------------------------------------------------
TEXTS = ["a photo of a cat", "a cup of coffee on a table", "a rocket"]
IMAGES3 = ["chelsea.png", "coffee.webp", "rocket.jpg"]
ZS_IMAGE = "chelsea.png"
ZS_LABELS = ["a photo of a cat", "a photo of a dog", "a photo of a rocket"]
COMPOSE_TEXT = "a photo of a cat"
COMPOSE_IMAGE = "chelsea.png"

HIDDEN = 32
TINY = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
VISION = dict(TINY, image_size=32, patch_size=8)
TEXT_MAX_POS = 64
PROJ = 16
PERTURB = 0.02

VERSIONS = {
    "python": sys.version.split()[0],
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "pillow": PIL.__version__,
    "tokenizers": tokenizers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}

# A small English corpus for training the BPE / Unigram tokenizers (and choosing the WordPiece words).
CORPUS = """
a photo of a cat
a photo of a dog
a photo of a rocket
a photo of a bird
a photo of a car
a cup of coffee on a table
a cup of tea on a wooden table
a rocket on the launch pad
a rocket lifting off into the blue sky
the cat is sleeping on the sofa
a ginger cat looking at the camera
a small dog running in the park
two dogs playing with a red ball
a man with a camera in the street
a black and white photo of a man
a woman holding a cup of coffee
an astronaut in a white space suit
the astronaut stands next to a flag
a logo on a white background
a picture of the city at night
a bowl of fruit on the kitchen table
a red car parked near the house
a bird sitting on a tree branch
a plate of food with a fork and a knife
a boat on the river at sunset
a train at the station
a green field with a blue sky
a close up photo of a flower
the coffee is hot and the cup is white
people walking on the beach
a child reading a book
a computer on a desk in an office
a painting of a mountain and a lake
an old building with many windows
a horse standing in the grass
the moon over the sea
a snowy road in the winter
a bicycle leaning against a wall
a photo of my cat and my dog
this is a photo of the space shuttle
they launched the rocket from the pad
we drink coffee every morning
there are three cats and two dogs
is it a cat or a dog
what a beautiful day for a walk
the quick brown fox jumps over the lazy dog
hello world, this is a test.
it's a nice photo, isn't it?
""".strip().splitlines()

# Words for the hand-written WordPiece vocabulary. "coffee" and "rocket" are deliberately NOT
# whole words so that the test texts exercise "##" continuation pieces ("cof ##fee", "rock ##et").
BERT_WORDS = sorted(
    set(
        """
a an the of on in at to and or is it this that with from for into over near next by up off
photo photos picture image painting cat cats dog dogs bird car cup tea table wooden launch pad
lifting blue sky sleeping sofa ginger looking camera small running park two three playing red
ball man woman street black white holding astronaut space suit stands flag logo background city
night bowl fruit kitchen parked house sitting tree branch plate food fork knife boat river sunset
train station green field close flower hot people walking beach child reading book computer desk
office mountain lake old building many windows horse standing grass moon sea snowy road winter
bicycle leaning against wall my shuttle they launched we drink every morning there are what
beautiful day walk quick brown fox jumps lazy hello world test nice isn t s rock cof
""".split()
    )
)
BERT_SUFFIXES = ["##et", "##fee", "##s", "##ing", "##ed", "##er", "##ly"]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, flush=True)


def dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def tolist(t: torch.Tensor):
    return t.detach().cpu().tolist()


def keys_and_shapes(state_dict) -> list:
    return sorted([k, list(v.shape)] for k, v in state_dict.items())


def file_keys_and_shapes(path: Path) -> list:
    out = []
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            out.append([k, list(f.get_slice(k).get_shape())])
    return sorted(out)


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add PERTURB * N(0,1) to every parameter, so zero-initialised biases, relative position bias
    tables, layer-scale lambdas and unit layer-norm weights are all non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.add_(PERTURB * torch.randn(p.shape, generator=g, dtype=p.dtype))


def float32_state(model: torch.nn.Module) -> None:
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, (k, v.dtype)


def load_images(names):
    return [load_image(str(IMAGES / n)) for n in names]


def fresh(tok):
    return copy.deepcopy(tok)


def all_image_names():
    """Every photo directly in tests/fixtures/images (not bad/), sorted by file name."""
    exts = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
    return sorted(p.name for p in IMAGES.iterdir() if p.is_file() and p.suffix.lower() in exts)


def check_pil_backend(ip) -> str:
    name = type(ip).__name__
    assert name.endswith("Pil"), f"expected a PIL-backend image processor, got {name}"
    assert getattr(ip, "backend", "pil") == "pil", name
    return name


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
def make_bert_tokenizer() -> BertTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()")
    vocab_list = specials + chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + BERT_SUFFIXES
    vocab_list += [w for w in BERT_WORDS if w not in vocab_list]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=TEXT_MAX_POS)
    return tok


def train_byte_bpe(corpus, specials, vocab_size, end_of_word_suffix=None, pre_tokenizer=None, normalizer=None):
    bpe_kwargs = {}
    trainer_kwargs = {}
    if end_of_word_suffix:
        bpe_kwargs["end_of_word_suffix"] = end_of_word_suffix
        trainer_kwargs["end_of_word_suffix"] = end_of_word_suffix
    tk = Tokenizer(models.BPE(**bpe_kwargs))
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **trainer_kwargs,
    )
    tk.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tk.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return vocab, merges


def make_roberta_tokenizer() -> RobertaTokenizerFast:
    # RoBERTa order: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=last (as in roberta-base).
    vocab, merges = train_byte_bpe(CORPUS, ["<s>", "<pad>", "</s>", "<unk>"], vocab_size=320)
    vocab["<mask>"] = len(vocab)
    tok = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=TEXT_MAX_POS - 2)
    assert tok.pad_token_id == 1 and tok.bos_token_id == 0 and tok.eos_token_id == 2, tok
    return tok


def bytes_to_unicode() -> dict:
    """GPT-2 / CLIP byte -> printable unicode map, in CLIP's vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


CLIP_MERGES = 40


def clip_normalizer():
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "), normalizers.Lowercase()]
    )


def clip_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                tokenizers.Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def learn_bpe_words(corpus, n_merges: int, suffix: str):
    """Deterministic BPE learning (pair counts weighted by word frequency; ties broken by the
    lexicographically smallest pair). tokenizers' BpeTrainer is not used here because with an
    end_of_word_suffix its symbol ids (hence merge tie-breaks) depend on HashMap order, so two
    runs give different vocabularies. Normalisation and pre-tokenisation are the tokenizers
    library's own (the exact CLIP pipeline CLIPTokenizer installs)."""
    norm, pre = clip_normalizer(), clip_pre_tokenizer()
    counts: dict = {}
    for line in corpus:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            counts[w] = counts.get(w, 0) + 1
    words = {w: tuple(w[:-1]) + (w[-1] + suffix,) for w in counts}
    merges = []
    for _ in range(n_merges):
        pc: dict = {}
        for w, sy in words.items():
            for a, b in zip(sy, sy[1:]):
                pc[(a, b)] = pc.get((a, b), 0) + counts[w]
        if not pc:
            break
        (a, b), c = min(pc.items(), key=lambda kv: (-kv[1], kv[0]))
        if c < 2:
            break
        merges.append((a, b))
        for w, sy in words.items():
            out, i = [], 0
            while i < len(sy):
                if i + 1 < len(sy) and sy[i] == a and sy[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sy[i])
                    i += 1
            words[w] = tuple(out)
    return merges


def make_clip_tokenizer() -> CLIPTokenizer:
    """CLIP-style byte-level BPE with '</w>' end-of-word suffix (vocabulary laid out like
    openai/clip: 256 byte symbols, the same with '</w>', then merged symbols in merge order).

    The special tokens are given the LOWEST ids (<|startoftext|>=0, <|endoftext|>=1), unlike
    openai/clip (where they are the two highest ids). This is deliberate: with eos not the
    highest id, the legacy `eos_token_id == 2` pooling rule (argmax of input_ids) and the
    first-eos rule pick different positions, so each checkpoint discriminates the two rules.
    """
    merges = learn_bpe_words(CORPUS, CLIP_MERGES, "</w>")
    symbols = ["<|startoftext|>", "<|endoftext|>"]
    base = list(bytes_to_unicode().values())
    symbols += base + [b + "</w>" for b in base]
    for a, b in merges:
        symbols.append(a + b)
    vocab = {}
    for t in symbols:
        vocab.setdefault(t, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_MAX_POS)
    assert tok.bos_token_id == 0 and tok.eos_token_id == 1 and tok.pad_token_id == 1, tok
    return tok


def make_xlmr_tokenizer() -> XLMRobertaTokenizer:
    # Unigram trained with the same pre-tokenizer XLMRobertaTokenizer installs (WhitespaceSplit + Metaspace).
    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
        shrinking_factor=0.75,
        max_piece_length=8,
        n_sub_iterations=2,
    )
    tk.train_from_iterator(CORPUS, trainer=trainer)
    vocab = [tuple(x) for x in json.loads(tk.to_str())["model"]["vocab"]]
    specials, rest = vocab[:4], vocab[4:]
    assert [p for p, _ in specials] == ["<s>", "<pad>", "</s>", "<unk>"], vocab[:5]
    # The trainer gives the required single characters near-equal scores in HashMap order
    # (differs run to run by ~1e-4): round to 2 decimals and sort (score desc, piece) so the
    # vocabulary is reproducible.
    rest = sorted(((p, round(float(s), 2)) for p, s in rest), key=lambda ps: (-ps[1], ps[0]))
    vocab = [(p, 0.0) for p, _ in specials] + rest
    vocab.append(("<mask>", 0.0))
    tok = XLMRobertaTokenizer(vocab=vocab, model_max_length=TEXT_MAX_POS - 2)
    assert tok.pad_token_id == 1 and tok.bos_token_id == 0 and tok.eos_token_id == 2 and tok.unk_token_id == 3
    return tok


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
def vit_config(**kw):
    return ViTConfig(**VISION, **kw)


def deit_config():
    return DeiTConfig(**VISION)


def beit_config():
    return BeitConfig(
        **VISION,
        use_mean_pooling=True,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=False,
        use_absolute_position_embeddings=False,
        layer_scale_init_value=0.1,
    )


def clip_vision_config():
    return CLIPVisionConfig(**VISION, hidden_act="quick_gelu", projection_dim=PROJ)


def bert_config(tok):
    return BertConfig(**TINY, vocab_size=len(tok), max_position_embeddings=TEXT_MAX_POS, pad_token_id=tok.pad_token_id)


def roberta_config(tok):
    return RobertaConfig(
        **TINY,
        vocab_size=len(tok),
        max_position_embeddings=TEXT_MAX_POS,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def xlmr_config(tok):
    return XLMRobertaConfig(
        **TINY,
        vocab_size=len(tok),
        max_position_embeddings=TEXT_MAX_POS,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def clip_text_config(tok, eos_token_id, hidden_act):
    return CLIPTextConfig(
        **TINY,
        vocab_size=len(tok),
        max_position_embeddings=TEXT_MAX_POS,
        hidden_act=hidden_act,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=PROJ,
    )


# --------------------------------------------------------------------------------------------
# Image processors
# --------------------------------------------------------------------------------------------
def vit_ip():
    return ViTImageProcessorPil(
        size={"height": 32, "width": 32},
        resample=PILImageResampling.BILINEAR,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def deit_ip():
    return DeiTImageProcessorPil(
        size={"height": 36, "width": 36},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def beit_ip():
    return BeitImageProcessorPil(
        size={"height": 32, "width": 32},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def clip_ip():
    return CLIPImageProcessorPil(
        size={"shortest_edge": 32},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
    )


# --------------------------------------------------------------------------------------------
# Saving helpers
# --------------------------------------------------------------------------------------------
def rewrite_processor_legacy(d: Path, ip, processor_class="VisionTextDualEncoderProcessor") -> None:
    """transformers 5 writes processor_config.json with the image processor nested; rewrite to the
    4.x layout: preprocessor_config.json = the image processor dict (+ processor_class), no
    processor_config.json."""
    pc = d / "processor_config.json"
    if pc.exists():
        pc.unlink()
    ipd = ip.to_dict()
    ipd["processor_class"] = processor_class
    assert ipd.get("image_processor_type"), ipd
    dump_json(d / "preprocessor_config.json", ipd)


def save_model(model, d: Path) -> None:
    """save_pretrained + key lists. transformers 5 renames some towers' modules in memory (ViT,
    DeiT, BEiT: `layers.N.attention.q_proj`, ...) and converts back to the checkpoint names on
    save, so `state_dict()` names are NOT the file's names. keys.json = names in model.safetensors
    (what a loader reads); state_dict_keys.json = the in-memory names."""
    model.save_pretrained(str(d))
    st = d / "model.safetensors"
    assert st.exists(), list(d.iterdir())
    dump_json(d / "keys.json", file_keys_and_shapes(st))
    dump_json(d / "state_dict_keys.json", keys_and_shapes(model.state_dict()))


def saved_keys(model) -> list:
    """Names and shapes as save_pretrained writes them to model.safetensors."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return file_keys_and_shapes(Path(tmp) / "model.safetensors")


def reload_checked(cls, d: Path):
    model, info = cls.from_pretrained(str(d), output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{d}: loading info {bad}"
    model.eval()
    return model


def state_equal(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), set(sa) ^ set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------------
# Dual-encoder checkpoints
# --------------------------------------------------------------------------------------------
def load_saved_processor(d: Path):
    """Load the processor back from disk exactly as a user would, forcing the PIL backend."""
    proc = AutoProcessor.from_pretrained(str(d), backend="pil")
    ip, tok = proc.image_processor, proc.tokenizer
    check_pil_backend(ip)
    # cross-check: the plain AutoImageProcessor path reads the same config
    ip2 = AutoImageProcessor.from_pretrained(str(d), backend="pil")
    assert type(ip2) is type(ip), (type(ip2), type(ip))
    assert ip2.to_dict() == ip.to_dict()
    return proc, ip, tok


def tower_outputs(model, ip, tok, texts, images):
    """Everything recorded for one dual-encoder model (VTDE or CLIPModel)."""
    enc = tok(texts, padding=True, return_tensors="pt")
    pix = ip(images, return_tensors="pt")["pixel_values"]
    assert pix.dtype == torch.float32, pix.dtype
    text_kwargs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    out = model(pixel_values=pix, return_loss=True, **text_kwargs)
    vo = model.vision_model(pixel_values=pix)
    to = model.text_model(**text_kwargs)
    vision_pooled = vo.pooler_output
    text_pooled = to.pooler_output
    image_features = model.visual_projection(vision_pooled)
    text_features = model.text_projection(text_pooled)
    # get_*_features: in transformers 5 these return a BaseModelOutputWithPooling whose
    # pooler_output is the projected, un-normalised feature.
    gif = model.get_image_features(pixel_values=pix)
    gtf = model.get_text_features(**text_kwargs)
    assert hasattr(gif, "pooler_output") and hasattr(gtf, "pooler_output"), (type(gif), type(gtf))
    torch.testing.assert_close(gif.pooler_output, image_features, rtol=0, atol=1e-6)
    torch.testing.assert_close(gtf.pooler_output, text_features, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.image_embeds, image_features / image_features.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.text_embeds, text_features / text_features.norm(dim=-1, keepdim=True))
    if isinstance(model, CLIPModel):
        # transformers 5 CLIPModel.forward goes through get_*_features, so the nested
        # *_model_output.pooler_output is the PROJECTED feature, not the tower's pooled output.
        torch.testing.assert_close(out.vision_model_output.pooler_output, image_features)
        torch.testing.assert_close(out.text_model_output.pooler_output, text_features)
    else:
        torch.testing.assert_close(out.vision_model_output.pooler_output, vision_pooled)
        torch.testing.assert_close(out.text_model_output.pooler_output, text_pooled)
    tensors = {
        "input_ids": enc["input_ids"].to(torch.int64),
        "attention_mask": enc["attention_mask"].to(torch.int64),
        "pixel_values": pix,
        "vision_pooled": vision_pooled,
        "text_pooled": text_pooled,
        "vision_last_hidden_state": vo.last_hidden_state,
        "text_last_hidden_state": to.last_hidden_state,
        "image_features": image_features,
        "text_features": text_features,
        "image_embeds": out.image_embeds,
        "text_embeds": out.text_embeds,
        "logits_per_text": out.logits_per_text,
        "logits_per_image": out.logits_per_image,
        "loss": out.loss.reshape(()),
    }
    if "token_type_ids" in enc:
        tensors["token_type_ids"] = enc["token_type_ids"].to(torch.int64)
    tensors["_pooling_rules"] = check_pooling(model, tensors)
    return tensors, out


def check_pooling(model, t: dict) -> str:
    """Re-derive both towers' pooler_output from last_hidden_state and the weights, following the
    rules in shared/REFERENCE.md 1.2, so the recorded fixtures document what each pooler is."""
    F = torch.nn.functional
    sd = model.state_dict()
    vc, tc = model.config.vision_config, model.config.text_config
    hv, ht = t["vision_last_hidden_state"], t["text_last_hidden_state"]
    vt, tt = vc.model_type, tc.model_type
    if vt in ("vit", "deit"):
        exp_v = torch.tanh(F.linear(hv[:, 0], sd["vision_model.pooler.dense.weight"], sd["vision_model.pooler.dense.bias"]))
        vrule = "tanh(pooler.dense(h[:,0]))"
    elif vt == "beit":
        exp_v = F.layer_norm(
            hv[:, 1:].mean(1), (hv.shape[-1],), sd["vision_model.pooler.layernorm.weight"],
            sd["vision_model.pooler.layernorm.bias"], eps=vc.layer_norm_eps,
        )
        vrule = "pooler.layernorm(mean(h[:,1:]))"
    elif vt == "clip_vision_model":
        exp_v = F.layer_norm(
            hv[:, 0], (hv.shape[-1],), sd["vision_model.post_layernorm.weight"],
            sd["vision_model.post_layernorm.bias"], eps=vc.layer_norm_eps,
        )
        vrule = "post_layernorm(h[:,0])"
    else:
        raise AssertionError(vt)
    if tt in ("bert", "roberta", "xlm-roberta"):
        exp_t = torch.tanh(F.linear(ht[:, 0], sd["text_model.pooler.dense.weight"], sd["text_model.pooler.dense.bias"]))
        trule = "tanh(pooler.dense(h[:,0]))"
    elif tt == "clip_text_model":
        ids = t["input_ids"]
        pos = ids.argmax(-1) if tc.eos_token_id == 2 else (ids == tc.eos_token_id).int().argmax(-1)
        exp_t = ht[torch.arange(ht.shape[0]), pos]
        trule = "h[argmax(input_ids)]" if tc.eos_token_id == 2 else "h[first eos]"
    else:
        raise AssertionError(tt)
    torch.testing.assert_close(t["vision_pooled"], exp_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(t["text_pooled"], exp_t, rtol=0, atol=1e-6)
    return f"vision {vt}: {vrule}; text {tt}: {trule}"


def manual_pixels(ipd: dict, im: Image.Image) -> torch.Tensor:
    """Independent re-implementation of the PIL-backend pipeline (shared/REFERENCE.md 1.5):
    Pillow resize on uint8 (reducing_gap=None) -> centre crop with floor offsets ->
    float64 * rescale_factor -> float32 -> (x - mean) / std in float32 -> CHW."""
    assert im.mode == "RGB"
    w, h = im.size
    size = ipd["size"]
    if ipd.get("do_resize"):
        if "shortest_edge" in size:
            s = size["shortest_edge"]
            short, long = (w, h) if w <= h else (h, w)
            ns, nl = s, int(s * long / short)
            nw, nh = (ns, nl) if w <= h else (nl, ns)
        else:
            nw, nh = size["width"], size["height"]
        im = im.resize((nw, nh), resample=PILImageResampling(ipd["resample"]), reducing_gap=None)
    a = np.asarray(im)  # H, W, C uint8
    if ipd.get("do_center_crop"):
        ch, cw = ipd["crop_size"]["height"], ipd["crop_size"]["width"]
        top, left = (a.shape[0] - ch) // 2, (a.shape[1] - cw) // 2
        a = a[top : top + ch, left : left + cw]
    x = (a.astype(np.float64) * ipd["rescale_factor"]).astype(np.float32)
    mean = np.array(ipd["image_mean"], dtype=np.float32)
    std = np.array(ipd["image_std"], dtype=np.float32)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def clip_pool_positions(input_ids, eos_token_id):
    """Positions each CLIP text pooling rule would pick (for the record)."""
    argmax = input_ids.to(torch.int).argmax(dim=-1)
    first_eos = (input_ids.to(torch.int) == eos_token_id).int().argmax(dim=-1)
    return tolist(argmax), tolist(first_eos)


def write_reference(d: Path, model, extra_json: dict) -> dict:
    tj = json.loads((d / "tokenizer.json").read_text())
    assert tj["padding"] is None and tj["truncation"] is None, (d, tj["padding"], tj["truncation"])
    proc, ip, tok = load_saved_processor(d)
    ip_class = type(ip).__name__
    imgs = load_images(IMAGES3)
    with torch.no_grad():
        tensors, out = tower_outputs(model, ip, tok, TEXTS, imgs)

        # Every photo (in sorted file-name order), image embeddings only.
        names, pix_all, unloadable = [], [], {}
        for n in all_image_names():
            try:
                im = load_image(str(IMAGES / n))
            except Exception as e:  # noqa: BLE001  (recorded, not fatal)
                unloadable[n] = f"{type(e).__name__}: {e}".replace(str(ROOT) + os.sep, "")
                continue
            names.append(n)
            pv = ip(im, return_tensors="pt")["pixel_values"][0]
            torch.testing.assert_close(pv, manual_pixels(ip.to_dict(), im), rtol=0, atol=1e-6)
            pix_all.append(pv)
        pix_all = torch.stack(pix_all)
        feats = model.get_image_features(pixel_values=pix_all).pooler_output
        tensors["all_pixel_values"] = pix_all
        tensors["all_image_features"] = feats
        tensors["all_image_embeds"] = feats / feats.norm(dim=-1, keepdim=True)

        # Zero-shot on chelsea.png.
        zs_enc = tok(ZS_LABELS, padding=True, return_tensors="pt")
        zs_pix = ip(load_images([ZS_IMAGE]), return_tensors="pt")["pixel_values"]
        zs_kwargs = {k: v for k, v in zs_enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        zs_out = model(pixel_values=zs_pix, **zs_kwargs)
        zs_probs = zs_out.logits_per_image.softmax(dim=-1)[0]
        tensors["zero_shot_input_ids"] = zs_enc["input_ids"].to(torch.int64)
        tensors["zero_shot_probs"] = zs_probs

    pooling_rules = tensors.pop("_pooling_rules")
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_file(tensors, str(d / "reference.safetensors"), metadata={"format": "pt"})

    logit_scale = float(model.logit_scale.detach())
    ref = {
        "texts": TEXTS,
        "images": IMAGES3,
        "all_images": names,
        "unloadable_images": unloadable,
        "image_processor_class": ip_class,
        "image_processor_backend": ip.backend,
        "processor_class": type(proc).__name__,
        "tokenizer_class": type(tok).__name__,
        "model_class": type(model).__name__,
        "projection_dim": int(model.config.projection_dim),
        "pooling": pooling_rules,
        "logit_scale": logit_scale,
        "logit_scale_exp": float(torch.tensor(logit_scale).exp()),
        "logit_scale_init_value": float(model.config.logit_scale_init_value),
        "tokenized": {
            k: tolist(tensors[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in tensors
        },
        "tokens": [tok.convert_ids_to_tokens(ids) for ids in tolist(tensors["input_ids"])],
        "loss": float(tensors["loss"]),
        "logits_per_image": tolist(tensors["logits_per_image"]),
        "zero_shot": {
            "image": ZS_IMAGE,
            "labels": ZS_LABELS,
            "probs": tolist(zs_probs),
            "logits_per_image": tolist(zs_out.logits_per_image[0]),
            "input_ids": tolist(zs_enc["input_ids"]),
            "attention_mask": tolist(zs_enc["attention_mask"]),
        },
        "reference_tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "versions": VERSIONS,
    }
    ref.update(extra_json)
    dump_json(d / "reference.json", ref)
    return ref


def build_vtde(name, out_root, vcfg, tcfg, ip, tok, seed, legacy_processor=False):
    d = out_root / name
    torch.manual_seed(seed)
    cfg = VisionTextDualEncoderConfig.from_vision_text_configs(vcfg, tcfg, projection_dim=PROJ)
    model = VisionTextDualEncoderModel(cfg).eval()
    perturb(model, seed + 1)
    float32_state(model)
    save_model(model, d)
    proc = VisionTextDualEncoderProcessor(image_processor=ip, tokenizer=tok)
    proc.save_pretrained(str(d))
    if legacy_processor:
        rewrite_processor_legacy(d, ip)
    reloaded = reload_checked(VisionTextDualEncoderModel, d)
    state_equal(model, reloaded)
    return d, reloaded


def main_checkpoints(out: Path, toks) -> dict:
    summary = {}
    # fresh copies at each use: calling a tokenizer with padding=True enables padding on its backend
    # `tokenizers.Tokenizer`, which save_pretrained would then write into tokenizer.json.
    bert_tok, roberta_tok, xlmr_tok, clip_tok = toks

    # 1. vit-bert (legacy processor layout)
    d, m = build_vtde("vit-bert", out, vit_config(), bert_config(bert_tok), vit_ip(), fresh(bert_tok), 100, legacy_processor=True)
    summary["vit-bert"] = write_reference(d, m, {"processor_layout": "legacy (preprocessor_config.json)"})

    # 2. deit-roberta (new processor layout)
    d, m = build_vtde("deit-roberta", out, deit_config(), roberta_config(roberta_tok), deit_ip(), fresh(roberta_tok), 200)
    summary["deit-roberta"] = write_reference(d, m, {"processor_layout": "new (processor_config.json)"})

    # 3. beit-xlmr
    d, m = build_vtde("beit-xlmr", out, beit_config(), xlmr_config(xlmr_tok), beit_ip(), fresh(xlmr_tok), 300)
    summary["beit-xlmr"] = write_reference(d, m, {"processor_layout": "new (processor_config.json)"})

    # 4. clipvision-bert
    d, m = build_vtde("clipvision-bert", out, clip_vision_config(), bert_config(bert_tok), clip_ip(), fresh(bert_tok), 400)
    assert type(m.vision_model).__name__ == "CLIPVisionModel"
    summary["clipvision-bert"] = write_reference(d, m, {"processor_layout": "new (processor_config.json)"})

    # 5. vit-cliptext: CLIP text tower with the real eos id (first-eos pooling rule)
    tcfg = clip_text_config(clip_tok, eos_token_id=clip_tok.eos_token_id, hidden_act="gelu")
    assert tcfg.eos_token_id != 2
    d, m = build_vtde("vit-cliptext", out, vit_config(), tcfg, vit_ip(), fresh(clip_tok), 500)
    assert type(m.text_model).__name__ == "CLIPTextModel"
    ids = fresh(clip_tok)(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    am, fe = clip_pool_positions(ids, clip_tok.eos_token_id)
    summary["vit-cliptext"] = write_reference(
        d,
        m,
        {
            "processor_layout": "new (processor_config.json)",
            "clip_text_pooling": {
                "rule": "first position of eos_token_id",
                "eos_token_id": clip_tok.eos_token_id,
                "first_eos_positions": fe,
                "argmax_positions_not_used": am,
            },
        },
    )

    # 6. clip: plain CLIPModel, legacy eos_token_id == 2 (argmax(input_ids) pooling)
    d = out / "clip"
    torch.manual_seed(600)
    ccfg = CLIPConfig(
        text_config=clip_text_config(clip_tok, eos_token_id=2, hidden_act="quick_gelu").to_dict(),
        vision_config=clip_vision_config().to_dict(),
        projection_dim=PROJ,
    )
    model = CLIPModel(ccfg).eval()
    perturb(model, 601)
    float32_state(model)
    save_model(model, d)
    CLIPProcessor(image_processor=clip_ip(), tokenizer=fresh(clip_tok)).save_pretrained(str(d))
    m = reload_checked(CLIPModel, d)
    state_equal(model, m)
    am, fe = clip_pool_positions(ids, clip_tok.eos_token_id)
    assert am != fe, "argmax and first-eos must differ in at least one text"
    summary["clip"] = write_reference(
        d,
        m,
        {
            "processor_layout": "new (processor_config.json)",
            "clip_text_pooling": {
                "rule": "config eos_token_id == 2: position of argmax(input_ids) (first maximum)",
                "config_eos_token_id": 2,
                "tokenizer_eos_token_id": clip_tok.eos_token_id,
                "argmax_positions": am,
                "first_eos_positions_not_used": fe,
            },
        },
    )
    return summary


def legacy_copies(out: Path) -> dict:
    """transformers 5.24 saves CLIPVisionModel / CLIPTextModel inside a VTDE with a SINGLE prefix
    (vision_model.embeddings.*), while 4.x saved vision_model.vision_model.* /
    text_model.text_model.*. Write copies with the 4.x key names (weights identical, so the
    reference outputs are the main checkpoint's) and check that 5.24 loads them cleanly."""
    res = {}
    for name, prefixes in (("clipvision-bert", ["vision_model."]), ("vit-cliptext", ["text_model."])):
        src, dst = out / name, out / "legacy" / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.name in ("model.safetensors", "keys.json", "reference.safetensors"):
                continue
            shutil.copy(f, dst / f.name)
        ref = json.loads((dst / "reference.json").read_text())
        ref["reference_safetensors"] = f"../../{name}/reference.safetensors"
        ref["note"] = (
            f"same weights as ../../{name} with transformers-4.x tensor names; "
            f"expected outputs are ../../{name}/reference.safetensors"
        )
        dump_json(dst / "reference.json", ref)
        sd = load_file(str(src / "model.safetensors"))
        new = {}
        for k, v in sd.items():
            for p in prefixes:
                if k.startswith(p):
                    k = p + p + k[len(p):]
            new[k] = v
        save_file(new, str(dst / "model.safetensors"), metadata={"format": "pt"})
        dump_json(dst / "keys.json", keys_and_shapes(new))
        m = reload_checked(VisionTextDualEncoderModel, dst)
        state_equal(VisionTextDualEncoderModel.from_pretrained(str(src)), m)
        res[name] = sorted({k.split(".")[0] + "." + k.split(".")[1] + "." for k in new if k.count(".") > 1})
    return res


def pytorch_bin_copy(out: Path) -> None:
    """Older hub repos ship `pytorch_model.bin` (a pickled state dict) instead of safetensors:
    legacy/deit-roberta-bin is deit-roberta saved that way (outputs: ../../deit-roberta)."""
    name = "deit-roberta"
    src, dst = out / name, out / "legacy" / f"{name}-bin"
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.name in ("model.safetensors", "reference.safetensors", "state_dict_keys.json"):
            continue
        shutil.copy(f, dst / f.name)
    sd = load_file(str(src / "model.safetensors"))
    torch.save(sd, dst / "pytorch_model.bin")
    m = VisionTextDualEncoderModel.from_pretrained(str(dst), use_safetensors=False)
    state_equal(VisionTextDualEncoderModel.from_pretrained(str(src)), m)


# --------------------------------------------------------------------------------------------
# Truncation: model_max_length below the position table
# --------------------------------------------------------------------------------------------
# Captions longer than every model_max_length below (the longest is ~50 tokens with the BERT
# tokenizer, under the 62-64 position tables), and one short caption that fits.
TRUNC_TEXTS = [
    "a ginger cat is sleeping on the sofa next to a cup of coffee on a wooden table while "
    "two dogs are playing with a red ball in the park under the blue sky",
    "a rocket lifting off into the blue sky from the launch pad at night, and people walking "
    "on the beach watch it",
    "a photo of a cat",
]
# (checkpoint, model_max_length, truncation_side): one per tokenizer family, each below its
# tower's position table; RoBERTa also cuts from the left, which transformers honours.
TRUNCATION = [
    ("vit-bert", 24, "right"),
    ("deit-roberta", 20, "left"),
    ("beit-xlmr", 18, "right"),
    ("vit-cliptext", 16, "right"),
]


def build_truncation(out: Path) -> dict:
    """Copies of four checkpoints whose tokenizer_config.json says model_max_length is below the
    text tower's position table, with what VisionTextDualEncoderProcessor(text=..., padding=True,
    truncation=True) and the model make of captions longer than it."""
    res = {}
    for name, mml, side in TRUNCATION:
        src, dst = out / name, out / "truncation" / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.name.startswith("reference") or f.name.endswith("keys.json"):
                continue
            shutil.copy(f, dst / f.name)
        tc = json.loads((dst / "tokenizer_config.json").read_text())
        tc["model_max_length"] = mml
        tc["truncation_side"] = side
        dump_json(dst / "tokenizer_config.json", tc)
        proc, ip, tok = load_saved_processor(dst)
        assert tok.model_max_length == mml and tok.truncation_side == side, (name, tok)
        model = VisionTextDualEncoderModel.from_pretrained(str(dst)).eval()
        positions = model.config.text_config.max_position_embeddings
        assert mml < positions, (name, mml, positions)
        with torch.no_grad():
            enc = proc(text=TRUNC_TEXTS, images=load_images(IMAGES3), padding=True, truncation=True, return_tensors="pt")
            full = fresh(tok)(TRUNC_TEXTS, padding=True, return_tensors="pt")["input_ids"]
            assert enc["input_ids"].shape[1] == mml < full.shape[1], (name, enc["input_ids"].shape, full.shape)
            kwargs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
            o = model(**kwargs)
        tensors = {
            "input_ids": enc["input_ids"].to(torch.int64),
            "attention_mask": enc["attention_mask"].to(torch.int64),
            "pixel_values": enc["pixel_values"],
            "text_embeds": o.text_embeds,
            "logits_per_text": o.logits_per_text,
        }
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(dst / "reference.safetensors"), metadata={"format": "pt"})
        ref = {
            "texts": TRUNC_TEXTS,
            "images": IMAGES3,
            "model_max_length": mml,
            "truncation_side": side,
            "max_position_embeddings": positions,
            "untruncated_lengths": tolist(full.ne(tok.pad_token_id).sum(-1)),
            "input_ids": tolist(enc["input_ids"]),
            "call": "VisionTextDualEncoderProcessor(text=texts, images=images, padding=True, truncation=True)",
            "versions": VERSIONS,
        }
        dump_json(dst / "reference.json", ref)
        res[name] = {"model_max_length": mml, "truncation_side": side, "positions": positions}
    return res


# --------------------------------------------------------------------------------------------
# Towers, compose, init
# --------------------------------------------------------------------------------------------
def build_towers(out: Path, toks) -> None:
    bert_tok, roberta_tok, _, clip_tok = toks
    t = out / "towers"

    torch.manual_seed(700)
    m = ViTModel(vit_config()).eval()  # add_pooling_layer=True
    perturb(m, 701)
    save_model(m, t / "vit")
    vit_ip().save_pretrained(str(t / "vit"))
    state_equal(m, reload_checked(ViTModel, t / "vit"))

    torch.manual_seed(710)
    m = ViTForImageClassification(
        vit_config(num_labels=3, id2label={0: "cat", 1: "coffee", 2: "rocket"}, label2id={"cat": 0, "coffee": 1, "rocket": 2})
    ).eval()
    perturb(m, 711)
    assert m.vit.pooler is None
    save_model(m, t / "vit-classifier")
    vit_ip().save_pretrained(str(t / "vit-classifier"))
    state_equal(m, reload_checked(ViTForImageClassification, t / "vit-classifier"))

    torch.manual_seed(720)
    m = BertModel(bert_config(bert_tok)).eval()
    perturb(m, 721)
    save_model(m, t / "bert")
    fresh(bert_tok).save_pretrained(str(t / "bert"))
    state_equal(m, reload_checked(BertModel, t / "bert"))

    torch.manual_seed(730)
    m = RobertaModel(roberta_config(roberta_tok)).eval()
    perturb(m, 731)
    save_model(m, t / "roberta")
    fresh(roberta_tok).save_pretrained(str(t / "roberta"))
    state_equal(m, reload_checked(RobertaModel, t / "roberta"))

    torch.manual_seed(740)
    ccfg = CLIPConfig(
        text_config=clip_text_config(clip_tok, eos_token_id=clip_tok.eos_token_id, hidden_act="quick_gelu").to_dict(),
        vision_config=clip_vision_config().to_dict(),
        projection_dim=PROJ,
    )
    m = CLIPModel(ccfg).eval()
    perturb(m, 741)
    save_model(m, t / "clip")
    CLIPProcessor(image_processor=clip_ip(), tokenizer=fresh(clip_tok)).save_pretrained(str(t / "clip"))
    state_equal(m, reload_checked(CLIPModel, t / "clip"))


COMPOSE = [
    # name, vision tower dir, text tower dir
    ("vit-bert", "vit", "bert"),
    ("clip-roberta", "clip", "roberta"),
    ("vitcls-bert", "vit-classifier", "bert"),
]


def build_compose(out: Path) -> dict:
    t = out / "towers"
    c = out / "compose"
    c.mkdir(parents=True, exist_ok=True)
    record, tensors = {}, {}
    img = load_images([COMPOSE_IMAGE])
    for name, vname, tname in COMPOSE:
        vdir, tdir = t / vname, t / tname
        torch.manual_seed(800)
        # relative paths (cwd = the models dir) so the saved `_name_or_path`s are "towers/<x>"
        cwd = os.getcwd()
        os.chdir(out)
        try:
            model = VisionTextDualEncoderModel.from_vision_text_pretrained(
                f"towers/{vname}", f"towers/{tname}", projection_dim=PROJ
            ).eval()
        finally:
            os.chdir(cwd)
        dump_json(c / f"{name}.state_dict_keys.json", keys_and_shapes(model.state_dict()))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            dump_json(c / f"{name}.keys.json", file_keys_and_shapes(Path(tmp) / "model.safetensors"))
            shutil.copy(Path(tmp) / "config.json", c / f"{name}.config.json")
            # the composed model must load back with nothing missing
            reload_checked(VisionTextDualEncoderModel, Path(tmp))

        ip = AutoImageProcessor.from_pretrained(str(vdir), backend="pil")
        ip_class = check_pil_backend(ip)
        tok = AutoTokenizer.from_pretrained(str(tdir))
        pix = ip(img, return_tensors="pt")["pixel_values"]
        enc = tok([COMPOSE_TEXT], return_tensors="pt")
        tk = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        rec = {
            "vision_tower": f"towers/{vname}",
            "text_tower": f"towers/{tname}",
            "image": COMPOSE_IMAGE,
            "image_processor_class": ip_class,
            "text": COMPOSE_TEXT,
            "input_ids": tolist(enc["input_ids"]),
            "attention_mask": tolist(enc["attention_mask"]),
            "vision_model_class": type(model.vision_model).__name__,
            "text_model_class": type(model.text_model).__name__,
        }
        if "token_type_ids" in enc:
            rec["token_type_ids"] = tolist(enc["token_type_ids"])
        with torch.no_grad():
            vo = model.vision_model(pixel_values=pix)
            to = model.text_model(**tk)
            # source towers, loaded on their own
            tsrc = AutoModelFor(tdir)
            torch.testing.assert_close(tsrc(**tk).pooler_output, to.pooler_output, rtol=0, atol=0)
            if vname == "clip":
                vsrc = CLIPModel.from_pretrained(str(vdir)).eval()
                torch.testing.assert_close(vsrc.vision_model(pixel_values=pix).pooler_output, vo.pooler_output, rtol=0, atol=0)
            elif vname == "vit":
                vsrc = ViTModel.from_pretrained(str(vdir)).eval()
                torch.testing.assert_close(vsrc(pixel_values=pix).pooler_output, vo.pooler_output, rtol=0, atol=0)
            else:
                vsrc = ViTForImageClassification.from_pretrained(str(vdir)).eval()
                src_cls = vsrc.vit(pixel_values=pix).last_hidden_state[:, 0]
                torch.testing.assert_close(src_cls, vo.last_hidden_state[:, 0], rtol=0, atol=0)
        rec["text_pooled"] = tolist(to.pooler_output)
        tensors[f"{name}.pixel_values"] = pix.contiguous()
        tensors[f"{name}.input_ids"] = enc["input_ids"].to(torch.int64)
        tensors[f"{name}.text_pooled"] = to.pooler_output.contiguous()
        if vname == "vit-classifier":
            # pooler.dense is freshly random in the composed model: record only the CLS state
            # (ViT's last_hidden_state is already after the final layernorm).
            rec["vision_last_hidden_cls"] = tolist(vo.last_hidden_state[:, 0])
            rec["vision_pooler_is_random"] = True
            tensors[f"{name}.vision_last_hidden_cls"] = vo.last_hidden_state[:, 0].contiguous()
        else:
            rec["vision_pooled"] = tolist(vo.pooler_output)
            tensors[f"{name}.vision_pooled"] = vo.pooler_output.contiguous()
        rec["newly_initialised"] = sorted(
            k for k in model.state_dict() if k in ("visual_projection.weight", "text_projection.weight", "logit_scale")
        ) + (["vision_model.pooler.dense.bias", "vision_model.pooler.dense.weight"] if vname == "vit-classifier" else [])
        record[name] = rec
    record["versions"] = VERSIONS
    dump_json(c / "compose.json", record)
    save_file(tensors, str(c / "compose.safetensors"), metadata={"format": "pt"})
    return record


def AutoModelFor(d: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(d)).eval()


def build_init(out: Path, toks) -> None:
    bert_tok, roberta_tok, xlmr_tok, _ = toks
    i = out / "init"
    pairs = [
        ("vit-bert", ("vit", vit_config()), ("bert", BertConfig(**TINY, vocab_size=len(bert_tok), max_position_embeddings=TEXT_MAX_POS))),
        ("beit-xlmr", ("beit", beit_config()), ("xlmr", xlmr_config(xlmr_tok))),
        ("clipvision-roberta", ("clip_vision", CLIPVisionConfig(**VISION)), ("roberta", roberta_config(roberta_tok))),
    ]
    for name, (vn, vc), (tn, tc) in pairs:
        dump_json(i / f"{vn}.config.json", vc.to_dict())
        dump_json(i / f"{tn}.config.json", tc.to_dict())
        cfg = VisionTextDualEncoderConfig.from_vision_text_configs(vc, tc, projection_dim=PROJ)
        torch.manual_seed(900)
        model = VisionTextDualEncoderModel(cfg)
        dump_json(i / f"{name}.keys.json", saved_keys(model))
        dump_json(i / f"{name}.state_dict_keys.json", keys_and_shapes(model.state_dict()))
        dump_json(i / f"{name}.vtde_config.json", cfg.to_dict())


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------
def prefixes(keys):
    return sorted({".".join(k.split(".")[:2]) + "." for k, _ in keys if k.count(".") >= 2} | {k for k, _ in keys if k.count(".") < 2})


def describe_images(out: Path) -> dict:
    """How Pillow / load_image decodes each photo (for decoder parity tests on the Rust side)."""
    res = {}
    for n in all_image_names():
        rec = {}
        try:
            with Image.open(IMAGES / n) as im:
                rec.update(
                    format=im.format,
                    mode=im.mode,
                    size=list(im.size),
                    n_frames=int(getattr(im, "n_frames", 1)),
                    exif_orientation=im.getexif().get(0x0112),
                )
                if im.format == "JPEG":
                    rec["jpeg_rawmode"] = im.tile[0].args[0] if im.tile else None
                    rec["progressive"] = bool(im.info.get("progressive") or im.info.get("progression"))
                raw = np.asarray(im) if im.mode not in ("P",) else None
                if raw is not None:
                    rec["raw_dtype"] = str(raw.dtype)
                    rec["raw_min_max"] = [int(raw.min()), int(raw.max())]
                if im.mode == "RGBA":
                    alpha = np.asarray(im)[..., 3]
                    rec["alpha_min_max"] = [int(alpha.min()), int(alpha.max())]
                    rec["alpha_lt_255_fraction"] = float((alpha < 255).mean())
        except Exception as e:  # noqa: BLE001
            rec["open_error"] = f"{type(e).__name__}: {e}".replace(str(ROOT) + os.sep, "")
        try:
            rgb = load_image(str(IMAGES / n))
            a = np.asarray(rgb)
            rec["load_image"] = {
                "mode": rgb.mode,
                "size": list(rgb.size),
                "mean_rgb": [round(float(x), 4) for x in a.reshape(-1, 3).mean(0)],
                "min_max": [int(a.min()), int(a.max())],
                "sha256_rgb8": hashlib.sha256(a.tobytes()).hexdigest(),
            }
        except Exception as e:  # noqa: BLE001
            rec["load_image_error"] = f"{type(e).__name__}: {e}".replace(str(ROOT) + os.sep, "")
        res[n] = rec
    notes = {
        "load_image": "PIL.Image.open -> ImageOps.exif_transpose -> .convert('RGB'); GIF/TIFF: first frame",
        "I;16": "Pillow converts 16-bit grey to 8-bit by CLAMPING (v > 255 -> 255), not by scaling (>> 8): "
        "coffee_red_16bit.png comes out almost entirely white (255,255,255)",
        "CMYK": "Adobe CMYK JPEG is read inverted (rawmode CMYK;I), then Pillow's cmyk->rgb: "
        "R = (255-C)*(255-K)/255 etc., no ICC",
        "RGBA": "convert('RGB') drops alpha without compositing on any background",
        "P": "palette images (GIF) are expanded through the palette; only frame 0 is used",
        "sha256_rgb8": "sha256 of the H*W*3 uint8 RGB buffer after load_image (row-major)",
    }
    data = {"images": res, "notes": notes, "versions": VERSIONS}
    dump_json(out / "images.json", data)
    return data


def write_readme(out: Path, summary: dict, legacy: dict) -> None:
    rows = []
    for name, ref in summary.items():
        cfg = json.loads((out / name / "config.json").read_text())
        if cfg["model_type"] == "clip":
            vt, tt = "clip_vision_model (in CLIPModel)", "clip_text_model (in CLIPModel)"
        else:
            vt, tt = cfg["vision_config"]["model_type"], cfg["text_config"]["model_type"]
        rows.append(
            f"| `{name}` | `{cfg['model_type']}` | {vt} | {tt} | `{ref['image_processor_class']}` | {ref['processor_layout']} |"
        )
    v = VERSIONS
    text = f"""# Tiny reference checkpoints

Generated by `scripts/make_fixtures.py` — do not edit by hand. Regenerate with

    /work/pyenv/bin/python scripts/make_fixtures.py

(any Python with the versions below; `--check-determinism` regenerates into a temp dir and
compares byte for byte). Everything is random-initialised from fixed seeds, then every
parameter gets `+ 0.02 * N(0,1)` (so biases, layer norms, BEiT's `lambda_1/lambda_2` and
relative-position tables, and `logit_scale` are all non-trivial; `logit_scale` therefore differs
from `logit_scale_init_value`: read it from the weights). float32, CPU, eval mode, `torch.no_grad()`.

Versions: torch {v['torch']}, transformers {v['transformers']}, Pillow {v['pillow']},
tokenizers {v['tokenizers']}, safetensors {v['safetensors']}, numpy {v['numpy']}, Python {v['python']}.
torchvision is NOT installed, and the PIL backend (`*ImageProcessorPil`) is requested explicitly
(`backend="pil"`) anyway: that is the parity target.

Sizes: hidden 32, 2 layers, 4 heads, intermediate 37, image 32, patch 8, text
max_position_embeddings 64, projection_dim 16.

## Dual-encoder checkpoints

| dir | model_type | vision | text | image processor (as loaded) | processor files |
|---|---|---|---|---|---|
{chr(10).join(rows)}

What each exercises:
- `vit-bert`: ViT pooler (tanh(dense(CLS))) + BERT (WordPiece with `##` pieces: "cof ##fee",
  "rock ##et"; `token_type_ids`); processor in the LEGACY layout: `preprocessor_config.json`
  (image processor dict + `image_processor_type` + `processor_class`), no `processor_config.json`.
  ViT resize 32x32 BILINEAR, mean/std 0.5.
- `deit-roberta`: DeiT (CLS + distillation token, pooler on token 0) + RoBERTa (byte-level BPE,
  `Ġ`, positions start at pad_token_id+1 = 2, no token_type_ids returned); processor in the NEW
  layout (`processor_config.json` with `"image_processor": {{...}}` nested, as transformers 5 writes).
  DeiT resize 36x36 BICUBIC + centre crop 32, IMAGENET_DEFAULT mean/std.
- `beit-xlmr`: BEiT with mean pooling (`pooler.layernorm(mean(h[:,1:]))`, final layernorm is
  Identity), per-layer relative position bias (`use_shared_relative_position_bias=False`),
  layer scale `lambda_1/lambda_2`; XLM-R Unigram tokenizer (Metaspace `▁`; no Precompiled
  normalizer since it was trained with `tokenizers`, not sentencepiece). BEiT 32x32 BICUBIC, 0.5.
  `relative_position_index` is NOT in the state dict (computed at run time in transformers 5).
- `clipvision-bert`: CLIP vision tower (`CLIPVisionModel`, quick_gelu, pre_layrnorm,
  post_layernorm on CLS, no bias on patch conv) + BERT; CLIP image processor (shortest_edge 32,
  centre crop 32, BICUBIC, OpenAI CLIP mean/std).
- `vit-cliptext`: ViT + CLIP text tower (`CLIPTextModel`, gelu, causal mask, `eos_token_id` =
  the tokenizer's real eos id {summary['vit-cliptext']['clip_text_pooling']['eos_token_id']}: pooling at the FIRST eos).
- `clip`: plain `CLIPModel` (`model_type: clip`), quick_gelu, text `eos_token_id: 2` = legacy
  rule: pool at `argmax(input_ids)`. The CLIP tokenizer gives the specials the LOWEST ids
  (`<|startoftext|>`=0, `<|endoftext|>`=1, pad = eos), unlike openai/clip, so argmax and
  first-eos positions differ for every test text (see `clip_text_pooling` in reference.json).
- `legacy/clipvision-bert`, `legacy/vit-cliptext`: the same weights with transformers-4.x key
  names (`vision_model.vision_model.*`, `text_model.text_model.*`); transformers 5.24 saves the
  CLIP towers inside a dual encoder with a single prefix (`vision_model.embeddings.*`,
  `text_model.embeddings.*`) but still loads the 4.x names (checked). Their outputs are those in
  `../<name>/reference.*`. Prefixes: {json.dumps(legacy)}.

Files per checkpoint: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
processor file(s), `reference.safetensors`, `reference.json`, `keys.json`, `state_dict_keys.json`.

**Key names: file vs memory.** transformers 5.24 renames some towers' modules in memory and
converts back on `save_pretrained`, so `model.state_dict()` names differ from the names stored in
`model.safetensors`:
- `keys.json` = sorted `[name, shape]` of the tensors IN `model.safetensors` (what a loader must
  read and a writer must produce). ViT/DeiT/BEiT are saved with the 4.x names
  (`vision_model.encoder.layer.N.attention.attention.{{query,key,value}}`, `...attention.output.dense`,
  `...intermediate.dense`, `...output.dense`, `...layernorm_{{before,after}}`, BEiT
  `...attention.attention.relative_position_bias.relative_position_bias_table`, `...lambda_{{1,2}}`).
- `state_dict_keys.json` = sorted `[name, shape]` of `model.state_dict()` (5.24 in-memory names,
  e.g. `vision_model.layers.N.attention.q_proj`, `...mlp.fc1`, BEiT
  `vision_model.layers.N.relative_position_bias.relative_position_bias_table`). Informational only.
- CLIP towers inside a dual encoder are saved by 5.24 with ONE prefix (`vision_model.embeddings.*`,
  `vision_model.pre_layrnorm.*`, `text_model.final_layer_norm.*`), whereas 4.x checkpoints have
  `vision_model.vision_model.*` / `text_model.text_model.*`: see `legacy/`. A plain `CLIPModel`
  (`clip/`, `towers/clip/`) has `vision_model.*` / `text_model.*` in both versions.
- BEiT's `relative_position_index` is not a tensor in either (4.x checkpoints may carry it as a
  buffer; transformers ignores it on load).

`reference.safetensors` (float32 / int64): `input_ids`, `attention_mask`, [`token_type_ids`],
`pixel_values` [3,3,32,32] for texts {TEXTS} and images {IMAGES3};
`vision_pooled`, `text_pooled` (tower pooler_output), `vision_last_hidden_state`,
`text_last_hidden_state`, `image_features`, `text_features` (projected, un-normalised),
`image_embeds`, `text_embeds` (normalised), `logits_per_text`, `logits_per_image`, `loss` (scalar,
`return_loss=True`), `all_pixel_values` [N,3,32,32], `all_image_features`, `all_image_embeds` [N,16]
for every loadable photo in `tests/fixtures/images` (order: `all_images` in reference.json; sorted
file names), `zero_shot_input_ids`, `zero_shot_probs` (softmax of logits_per_image for
{ZS_IMAGE} against {ZS_LABELS}).
`multipage_rgb.tif` is a float32 planar RGB TIFF that Pillow {v['pillow']} cannot open
("unknown pixel mode"), so `load_image` fails on it: listed under `unloadable_images`, no embedding.

## images.json
How Pillow {v['pillow']} / `load_image` decodes each photo: file mode, size, EXIF orientation,
JPEG raw mode, and after `load_image` the size, mean RGB and the sha256 of the RGB8 buffer (for
exact-decode checks of lossless formats). Notable conversions: 16-bit grey PNG (`I;16`) is CLAMPED
to 255 (not scaled), so `coffee_red_16bit.png` becomes nearly all white; Adobe CMYK JPEG is read
inverted and converted with Pillow's naive formula (no ICC); RGBA drops alpha with no compositing;
GIF uses frame 0 through its palette.

## towers/ (inputs to compose tests)
- `vit/`: `ViTModel` with pooler + ViT image processor (PIL, 32x32 bilinear, 0.5).
- `vit-classifier/`: `ViTForImageClassification`, 3 labels, weights under `vit.` + `classifier.`,
  NO pooler (the composed model gets a freshly random `pooler.dense`).
- `bert/`: `BertModel` + tokenizer; `roberta/`: `RobertaModel` + tokenizer.
- `clip/`: a full `CLIPModel` (+ `CLIPProcessor`); compose takes only its vision tower
  (`CLIPVisionModel`, CLIP's own `visual_projection` is dropped).

## compose/
`<name>.keys.json` = sorted `[name, shape]` of the model.safetensors that `save_pretrained` writes for
`VisionTextDualEncoderModel.from_vision_text_pretrained("towers/<v>", "towers/<t>", projection_dim=16)`
(run from this directory, so `_name_or_path` in the configs is `towers/<x>`),
`<name>.state_dict_keys.json` = its `state_dict()` names,
`<name>.config.json` = its saved config.json, for {', '.join(f'`{n}` ({v}+{t})' for n, v, t in COMPOSE)}.
`compose.json` / `compose.safetensors`: outputs of the composed model on {COMPOSE_IMAGE} (pixel
values from the vision tower's own image processor) and "{COMPOSE_TEXT}": `vision_pooled` and
`text_pooled` (equal, bit for bit, to the source towers' own outputs: checked), except for
`vitcls-bert` where the pooler is random and `vision_last_hidden_cls` (= last_hidden_state[:,0],
after the final layernorm) is recorded instead.

## init/
Tower configs (`<tower>.config.json` = `Config(...).to_dict()`), the dual-encoder config
(`<pair>.vtde_config.json`) and `<pair>.keys.json` = sorted `[name, shape]` as saved to
model.safetensors (and `<pair>.state_dict_keys.json` in memory) of
`VisionTextDualEncoderModel(VisionTextDualEncoderConfig.from_vision_text_configs(v, t, projection_dim=16))`
for `vit-bert` (vit.config.json, bert.config.json), `beit-xlmr` (beit, xlmr) and
`clipvision-roberta` (clip_vision, roberta).

## truncation/
Copies of `vit-bert`, `deit-roberta`, `beit-xlmr` and `vit-cliptext` (same weights) whose
`tokenizer_config.json` sets `model_max_length` below the text tower's position table (24, 20
with `truncation_side: left`, 18 and 16 against 62-64 positions). `reference.safetensors` holds
what `VisionTextDualEncoderProcessor(text=texts, images=images, padding=True, truncation=True)`
and the model make of three captions, two longer than the limit: `input_ids`,
`attention_mask`, `pixel_values`, `text_embeds`, `logits_per_text`. Rewrite only these with
`scripts/make_fixtures.py --only-truncation`.

## Round trip
`scripts/check_roundtrip.py DIR` loads a directory written by dualsight with transformers, asserts
no missing/unexpected keys and prints the embeddings of the same 3 texts / 3 photos as JSON.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
def generate(out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    # BMP copy of camera.png (PIL's BMP writer is deterministic)
    bmp = IMAGES / "camera.bmp"
    with Image.open(IMAGES / "camera.png") as im:
        im.save(bmp, format="BMP")

    toks = (make_bert_tokenizer(), make_roberta_tokenizer(), make_xlmr_tokenizer(), make_clip_tokenizer())
    log("tokenizers: " + ", ".join(f"{type(t).__name__}({len(t)})" for t in toks))
    summary = main_checkpoints(out, toks)
    legacy = legacy_copies(out)
    pytorch_bin_copy(out)
    build_towers(out, toks)
    compose = build_compose(out)
    build_init(out, toks)
    build_truncation(out)
    describe_images(out)
    write_readme(out, summary, legacy)
    return {"summary": summary, "legacy": legacy, "compose": compose}


def tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def print_summary(out: Path, res: dict) -> None:
    log("")
    log(f"versions: {json.dumps(VERSIONS)}")
    for name, ref in res["summary"].items():
        cfg = json.loads((out / name / "config.json").read_text())
        keys = json.loads((out / name / "keys.json").read_text())
        log(
            f"{name:16s} {cfg['model_type']:26s} ip={ref['image_processor_class']:22s} "
            f"tok={ref['tokenizer_class']:20s} layout={ref['processor_layout'].split()[0]:6s} "
            f"loss={ref['loss']:.6f} logit_scale={ref['logit_scale']:.6f} zs={['%.4f' % p for p in ref['zero_shot']['probs']]}"
        )
        log(f"{'':16s} prefixes: {prefixes(keys)}")
    log(f"legacy prefixes: {res['legacy']}")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    log(f"{len(files)} files, {total / 1e6:.2f} MB under {out.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "models"))
    ap.add_argument("--check-determinism", action="store_true", help="also regenerate into a temp dir and compare")
    ap.add_argument("--only-truncation", action="store_true", help="(re)write only truncation/ from the checkpoints already in --out")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    if args.only_truncation:
        torch.set_default_dtype(torch.float32)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        shutil.rmtree(out / "truncation", ignore_errors=True)
        log(json.dumps(build_truncation(out)))
        return
    res = generate(out)
    print_summary(out, res)
    if args.check_determinism:
        with tempfile.TemporaryDirectory() as tmp:
            out2 = Path(tmp) / "models"
            generate(out2)
            a, b = tree_digest(out), tree_digest(out2)
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if diff:
                log(f"NOT deterministic: {diff}")
                sys.exit(1)
            log(f"deterministic: {len(a)} files identical")


if __name__ == "__main__":
    main()
