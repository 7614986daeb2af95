#!/usr/bin/env python3
"""Load a checkpoint directory written by dualsight with transformers and print its embeddings.

    /work/pyenv/bin/python scripts/check_roundtrip.py DIR [--expect FIXTURE_DIR] [--text T ...] [--image NAME ...]

- Loads the model with `from_pretrained(DIR, output_loading_info=True)` (VisionTextDualEncoderModel,
  or CLIPModel when config.json says model_type "clip") and FAILS (exit 1) on any missing,
  unexpected or mismatched key, or loading error.
- Loads the processor with `AutoProcessor.from_pretrained(DIR, backend="pil")`, falling back to
  `AutoImageProcessor(backend="pil")` + `AutoTokenizer` (both processor layouts: transformers 5
  `processor_config.json` with a nested image processor, and legacy `preprocessor_config.json`).
  The image processor must be a PIL-backend class (`*ImageProcessorPil`).
- Prints JSON on stdout: input ids, normalised `text_embeds` / `image_embeds`, un-normalised
  `text_features` / `image_features`, `logits_per_image` / `logits_per_text`, `logit_scale`
  (= exp of the stored parameter, as `dualsight embed --json` reports it) and `logit_scale_param`,
  for the same 3 texts and
  3 photos as tests/fixtures/models/*/reference.* (photos loaded with
  `transformers.image_utils.load_image`: PIL open + EXIF transpose + convert("RGB")).
- With --expect FIXTURE_DIR (e.g. tests/fixtures/models/vit-bert), also compares with that
  fixture's reference.safetensors (same texts/images only) and reports max abs differences;
  exit 1 if any exceeds --atol (default 1e-4).
Logs go to stderr, so `... | jq` works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    VisionTextDualEncoderModel,
)
from transformers.image_utils import load_image  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "tests" / "fixtures" / "images"
TEXTS = ["a photo of a cat", "a cup of coffee on a table", "a rocket"]
IMAGES3 = ["chelsea.png", "coffee.webp", "rocket.jpg"]


def eprint(*a):
    print(*a, file=sys.stderr, flush=True)


def load_model(d: Path):
    cfg = AutoConfig.from_pretrained(str(d))
    cls = CLIPModel if cfg.model_type == "clip" else VisionTextDualEncoderModel
    model, info = cls.from_pretrained(str(d), output_loading_info=True)
    problems = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in info.items() if v}
    if problems:
        eprint(f"loading {d} with {cls.__name__}: {json.dumps(problems, indent=2, default=str)}")
        sys.exit(1)
    return model.eval(), cfg


def load_processor(d: Path):
    try:
        proc = AutoProcessor.from_pretrained(str(d), backend="pil")
        ip, tok = proc.image_processor, proc.tokenizer
        how = f"AutoProcessor -> {type(proc).__name__}"
    except Exception as e:  # noqa: BLE001
        eprint(f"AutoProcessor failed ({type(e).__name__}: {e}); using AutoImageProcessor + AutoTokenizer")
        ip = AutoImageProcessor.from_pretrained(str(d), backend="pil")
        tok = AutoTokenizer.from_pretrained(str(d))
        how = "AutoImageProcessor + AutoTokenizer"
    if not type(ip).__name__.endswith("Pil"):
        eprint(f"image processor is {type(ip).__name__}, not a PIL-backend class")
        sys.exit(1)
    warn = []
    if not (d / "tokenizer_config.json").is_file():
        warn.append("no tokenizer_config.json: transformers cannot tell the tokenizer class or special-token roles")
    if tok.pad_token is None:
        vocab = tok.get_vocab()
        guess = next((t for t in ("[PAD]", "<pad>", "<|endoftext|>") if t in vocab), None)
        warn.append(f"tokenizer has no pad token; using {guess!r} (guessed from the vocabulary)")
        if guess is None:
            eprint(warn[-1])
            sys.exit(1)
        tok.pad_token = guess
    for w in warn:
        eprint("warning: " + w)
    return ip, tok, how, warn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--text", action="append", help="text (repeatable; default: the 3 reference texts)")
    ap.add_argument("--image", action="append", help="file name in tests/fixtures/images or a path (repeatable)")
    ap.add_argument("--expect", type=Path, help="fixture dir whose reference.safetensors to compare with")
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    torch.set_default_dtype(torch.float32)
    texts = args.text or TEXTS
    image_names = args.image or IMAGES3
    image_paths = [str(IMAGES / n) if (IMAGES / n).is_file() else n for n in image_names]

    model, cfg = load_model(args.dir)
    ip, tok, how, warn = load_processor(args.dir)

    enc = tok(texts, padding=True, return_tensors="pt")
    text_kwargs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    pix = ip([load_image(p) for p in image_paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pix, **text_kwargs)
        image_features = model.get_image_features(pixel_values=pix).pooler_output
        text_features = model.get_text_features(**text_kwargs).pooler_output

    if cfg.model_type == "clip":
        vtype, ttype = "clip_vision_model", "clip_text_model"
    else:
        vtype, ttype = cfg.vision_config.model_type, cfg.text_config.model_type
    result = {
        "dir": str(args.dir),
        "model_class": type(model).__name__,
        "model_type": cfg.model_type,
        "vision_model_type": vtype,
        "text_model_type": ttype,
        "image_processor_class": type(ip).__name__,
        "tokenizer_class": type(tok).__name__,
        "processor_loaded_with": how,
        "warnings": warn,
        "texts": texts,
        "images": image_names,
        "input_ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        # like `dualsight embed --json`: logit_scale = exp(parameter); the raw parameter beside it
        "logit_scale": float(model.logit_scale.exp()),
        "logit_scale_param": float(model.logit_scale),
        "text_embeds": out.text_embeds.tolist(),
        "image_embeds": out.image_embeds.tolist(),
        "text_features": text_features.tolist(),
        "image_features": image_features.tolist(),
        "logits_per_image": out.logits_per_image.tolist(),
        "logits_per_text": out.logits_per_text.tolist(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    failed = False
    if args.expect is not None:
        from safetensors.torch import load_file

        ref = load_file(str(args.expect / "reference.safetensors"))
        if texts != TEXTS or image_names != IMAGES3:
            eprint("--expect compares only the default texts/images; ignoring")
        else:
            got = {
                "input_ids": enc["input_ids"],
                "pixel_values": pix,
                "text_embeds": out.text_embeds,
                "image_embeds": out.image_embeds,
                "text_features": text_features,
                "image_features": image_features,
                "logits_per_image": out.logits_per_image,
            }
            diffs = {}
            for k, v in got.items():
                r = ref[k]
                if r.shape != v.shape:
                    diffs[k] = f"shape {list(v.shape)} != {list(r.shape)}"
                    failed = True
                    continue
                dmax = float((v.to(torch.float64) - r.to(torch.float64)).abs().max())
                diffs[k] = dmax
                failed |= dmax > args.atol
            result["compare"] = {"expect": str(args.expect), "atol": args.atol, "max_abs_diff": diffs, "ok": not failed}
    print(json.dumps(result, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
