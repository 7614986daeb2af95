#!/usr/bin/env python3
"""Record what PyTorch + transformers do when training the tiny checkpoints, step for step.

    python3 scripts/make_train_fixtures.py

For each tiny checkpoint of tests/fixtures/models/ (copied with every dropout and drop-path
rate set to 0, so that a training forward is deterministic) and the six image-caption pairs
of tests/fixtures/train/data.jsonl, it writes tests/fixtures/train/<ckpt>/:

  model/                    the checkpoint the Rust tests train (dropout 0)
  grads-1.safetensors       every parameter's gradient of the first batch's loss
                            (parameter names as in model.named_parameters())
  params-3.safetensors      all weights after 3 optimizer steps (save_pretrained's layout)
  params-3-frozen-vision.safetensors   the same with the vision tower frozen
  params-3-frozen-text.safetensors     ... and with the text tower frozen
  reference.json            losses, gradient norms, the hyper-parameters, decay names

The loop is the Trainer's (transformers 5, run_clip.py), written out because the Trainer
itself needs `accelerate` and shuffles: AdamW over the Trainer's two decay groups
(`Trainer.get_decay_parameter_names`), `get_linear_schedule_with_warmup` stepped after each
optimizer step, `clip_grad_norm_` before it, batches in file order with the last one kept.
Images go through the checkpoint's own image processor (PIL backend, transformers'
`load_image`), captions through its tokenizer with padding and truncation.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    CLIPModel,
    Trainer,
    VisionTextDualEncoderModel,
    get_linear_schedule_with_warmup,
)
from PIL import Image  # noqa: E402
from transformers.image_utils import load_image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests/fixtures/models"
OUT = ROOT / "tests/fixtures/train"
CHECKPOINTS = ["vit-bert", "deit-roberta", "beit-xlmr", "clipvision-bert", "clip", "vit-cliptext"]

PAIRS = [
    ("chelsea.png", "a tabby cat looking at the camera"),
    ("coffee.webp", "a red cup of coffee on a saucer"),
    ("rocket.jpg", "a rocket on the launch pad"),
    ("camera.png", "a black and white photo of a man with a camera on a tripod"),
    ("rocket_progressive.jpg", "the same rocket, but progressive"),
    ("coffee_phone_exif6.jpg", "coffee photographed with a phone"),
]
HYPER = {
    "batch_size": 2,
    "learning_rate": 5e-3,
    "weight_decay": 0.1,
    "warmup_steps": 1,
    "max_grad_norm": 0.5,
    "max_steps": 3,
}
DROPOUT_KEYS = [
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "attention_dropout",
    "dropout",
    "drop_path_rate",
    "projection_dropout",
]
MODEL_FILES = [
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]


def without_dropout(src: Path, dst: Path) -> None:
    """Copies a checkpoint with every dropout and drop-path rate of its towers set to 0."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    config = json.loads((dst / "config.json").read_text())
    for tower in ("vision_config", "text_config"):
        for key in DROPOUT_KEYS:
            config[tower][key] = 0.0
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load(model_dir: Path):
    config = json.loads((model_dir / "config.json").read_text())
    cls = CLIPModel if config["model_type"] == "clip" else VisionTextDualEncoderModel
    model = cls.from_pretrained(model_dir)
    model.train()
    return model


def batches(model_dir: Path):
    proc = AutoProcessor.from_pretrained(model_dir, backend="pil")
    ip, tok = proc.image_processor, proc.tokenizer
    b = HYPER["batch_size"]
    out = []
    for i in range(0, len(PAIRS), b):
        chunk = PAIRS[i : i + b]
        images = [load_image(str(OUT / "images" / (Path(n).stem + ".png"))) for n, _ in chunk]
        text = tok([c for _, c in chunk], padding=True, truncation=True, return_tensors="pt")
        inputs = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}
        text_type = json.loads((model_dir / "config.json").read_text())["text_config"]["model_type"]
        if "token_type_ids" in text and text_type != "clip_text_model":
            inputs["token_type_ids"] = text["token_type_ids"]
        inputs["pixel_values"] = ip(images, return_tensors="pt")["pixel_values"]
        out.append(inputs)
    return out


def first_gradients(model_dir: Path, batch) -> tuple[float, dict]:
    model = load(model_dir)
    loss = model(**batch, return_loss=True).loss
    loss.backward()
    grads = {
        n: p.grad.detach().clone().contiguous()
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    return float(loss), grads


def three_steps(model_dir: Path, data, freeze: str | None, out_file: Path) -> dict:
    torch.manual_seed(0)
    model = load(model_dir)
    if freeze is not None:
        # run_clip.py's _freeze_params: the tower only, not its projection.
        for p in getattr(model, freeze).parameters():
            p.requires_grad = False
    decay = set(Trainer.get_decay_parameter_names(None, model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": HYPER["weight_decay"]},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=HYPER["learning_rate"], betas=(0.9, 0.999), eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, HYPER["warmup_steps"], HYPER["max_steps"])
    losses, norms, lrs = [], [], []
    for step in range(HYPER["max_steps"]):
        batch = data[step % len(data)]
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss))
        norms.append(float(norm))
    assert any(n > HYPER["max_grad_norm"] for n in norms), f"clipping inactive: {norms}"
    tmp = out_file.parent / "tmp-save"
    model.save_pretrained(tmp)
    shutil.move(tmp / "model.safetensors", out_file)
    shutil.rmtree(tmp)
    return {
        "losses": losses,
        "grad_norms": norms,
        "learning_rates": lrs,
        "decay": sorted(decay),
        "trainable": [n for n, _ in params],
    }


def write_images() -> None:
    """Small PNG copies of the photos: lossless, so that no JPEG decoder's
    rounding differs between the frameworks, and a few KB each."""
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    with open(OUT / "data.jsonl", "w") as f:
        for image, caption in PAIRS:
            png = Path(image).stem + ".png"
            im = load_image(str(ROOT / "tests/fixtures/images" / image))
            im.resize((48, 40), Image.BICUBIC).save(OUT / "images" / png)
            f.write(json.dumps({"image": f"images/{png}", "caption": caption}) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    write_images()
    for name in CHECKPOINTS:
        d = OUT / name
        d.mkdir(exist_ok=True)
        model_dir = d / "model"
        without_dropout(MODELS / name, model_dir)
        data = batches(model_dir)
        loss1, grads = first_gradients(model_dir, data[0])
        save_file(grads, str(d / "grads-1.safetensors"), metadata={"format": "pt"})
        full = three_steps(model_dir, data, None, d / "params-3.safetensors")
        frozen = three_steps(
            model_dir, data, "vision_model", d / "params-3-frozen-vision.safetensors"
        )
        frozen_text = three_steps(
            model_dir, data, "text_model", d / "params-3-frozen-text.safetensors"
        )
        reference = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "hyper": HYPER,
            "loss_1": loss1,
            "full": full,
            "frozen_vision": frozen,
            "frozen_text": frozen_text,
        }
        (d / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
        print(f"{name}: loss {loss1:.6f}, steps {full['losses']}, norms {full['grad_norms']}")


if __name__ == "__main__":
    main()
