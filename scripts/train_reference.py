#!/usr/bin/env python3
"""The same contrastive recipe as `dualsight train`, run by PyTorch + transformers, and
zero-shot accuracy measured by transformers: the reference for BENCHMARKS.md.

Train (from the same starting checkpoint, on the same class folders):
    python3 scripts/train_reference.py train --model INIT --data TRAIN_DIR --out OUT \
        [--epochs 1] [--max-steps N] [--batch-size 128] [--learning-rate 1e-3] \
        [--warmup-steps 0] [--weight-decay 0] [--max-grad-norm 1] [--predecoded]
Evaluate any checkpoint (ours or this script's) on class folders:
    python3 scripts/train_reference.py eval --model DIR --data TEST_DIR

Training is the Trainer's loop (see make_train_fixtures.py): AdamW in two decay groups,
the linear schedule with warmup, clip_grad_norm_, a seeded shuffle; images through the
checkpoint's image processor (PIL backend), captions "a photo of a {class}" through its
tokenizer. By default each batch is decoded as it comes, as run_clip.py does; --predecoded
decodes every image once first and times the optimisation alone. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoTokenizer,
    Trainer,
    VisionTextDualEncoderModel,
    get_linear_schedule_with_warmup,
)

TEMPLATE = "a photo of a {}"


def class_folders(root: Path):
    pairs = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir()):
            pairs.append((f, TEMPLATE.format(cls.name)))
    return pairs


def pixels(ip, paths):
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return ip(images, return_tensors="pt")["pixel_values"]


def train(a) -> None:
    torch.manual_seed(a.seed)
    model = VisionTextDualEncoderModel.from_pretrained(a.model)
    model.train()
    ip = AutoImageProcessor.from_pretrained(a.model, backend="pil")
    tok = AutoTokenizer.from_pretrained(a.model)
    pairs = class_folders(Path(a.data))
    steps_per_epoch = -(-len(pairs) // a.batch_size)
    total = a.max_steps or a.epochs * steps_per_epoch
    decay = set(Trainer.get_decay_parameter_names(None, model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if n in decay], "weight_decay": a.weight_decay},
            {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
        ],
        lr=a.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    sched = get_linear_schedule_with_warmup(opt, a.warmup_steps, total)
    cache = None
    if a.predecoded:
        cache = torch.cat([pixels(ip, [p for p, _ in pairs[i : i + 512]]) for i in range(0, len(pairs), 512)])
    gen = torch.Generator().manual_seed(a.seed)
    start = time.perf_counter()
    step, seen, losses = 0, 0, []
    while step < total:
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for b in range(steps_per_epoch):
            rows = order[b * a.batch_size : (b + 1) * a.batch_size]
            px = cache[rows] if cache is not None else pixels(ip, [pairs[r][0] for r in rows])
            text = tok([pairs[r][1] for r in rows], padding=True, truncation=True, return_tensors="pt")
            out = model(**text, pixel_values=px, return_loss=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(out.loss))
            seen += len(rows)
            step += 1
            if step >= total:
                break
    secs = time.perf_counter() - start
    model.save_pretrained(a.out)
    ip.save_pretrained(a.out)
    tok.save_pretrained(a.out)
    print(json.dumps({
        "steps": step,
        "seconds": secs,
        "images_per_second": seen / secs,
        "final_loss": losses[-1],
        "threads": torch.get_num_threads(),
    }))


@torch.no_grad()
def evaluate(a) -> None:
    model = VisionTextDualEncoderModel.from_pretrained(a.model).eval()
    ip = AutoImageProcessor.from_pretrained(a.model, backend="pil")
    tok = AutoTokenizer.from_pretrained(a.model)
    pairs = class_folders(Path(a.data))
    captions = sorted({c for _, c in pairs})
    # transformers 5 returns the projected features as the output's pooler_output.
    text = model.get_text_features(**tok(captions, padding=True, truncation=True, return_tensors="pt"))
    text = getattr(text, "pooler_output", text)
    text = text / text.norm(dim=-1, keepdim=True)
    right = 0
    for i in range(0, len(pairs), 512):
        chunk = pairs[i : i + 512]
        img = model.get_image_features(pixel_values=pixels(ip, [p for p, _ in chunk]))
        img = getattr(img, "pooler_output", img)
        img = img / img.norm(dim=-1, keepdim=True)
        best = (img @ text.T).argmax(dim=-1).tolist()
        right += sum(captions[b] == c for b, (_, c) in zip(best, chunk))
    print(json.dumps({"images": len(pairs), "zero_shot_accuracy": right / len(pairs)}))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--max-grad-norm", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--predecoded", action="store_true")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    a = p.parse_args()
    train(a) if a.cmd == "train" else evaluate(a)


if __name__ == "__main__":
    main()
