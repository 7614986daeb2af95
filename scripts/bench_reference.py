#!/usr/bin/env python3
"""The reference side of `dualsight-bench --reference`: the same measurements
with transformers + PyTorch (f32) + PIL, on the same checkpoint directory, the
same JPEG files, the same query texts and the same number of threads.

    python scripts/bench_reference.py --params PARAMS.json --out OUT.json

`dualsight-bench --reference` writes PARAMS.json (model dir, threads, batch
sizes, repeat policy, JPEG paths, texts, index sizes, HNSW parameters) and
reads OUT.json: {"figures": [{"key", "value", "label", "unit", "better",
"section", "note", "versus"}], "info": {...}}. Keys are dualsight's, so each
value lands beside dualsight's own; a figure with no twin names the one it is
compared with in "versus". Progress goes to stderr.

What is measured (see BENCHMARKS.md):
- model.load_s: `VisionTextDualEncoderModel.from_pretrained(DIR)`.
- vision.bN.images_per_s: `get_image_features` + L2 norm on a ready
  (N, 3, H, W) tensor, `torch.inference_mode()`, median after one warm-up.
- decode.*: `transformers.image_utils.load_image` (PIL open + EXIF transpose +
  RGB) then the PIL-backend image processor (`backend="pil"`), per file on one
  thread; and a `multiprocessing` pool of THREADS processes over all files.
- ingest.images_per_s: the pool decodes each batch of `ingest_batch` files,
  then the vision tower embeds it (sequential stages; no store).
- ingest.inline_images_per_s: the same without the pool: each batch is
  decoded in the indexing process, file after file, then embedded. The plain
  loop most Python tools run, and the pipeline the issue's 1.36 images/s
  figure was measured on; reported `versus` dualsight's ingest.images_per_s.
- text.*: tokenizer + `get_text_features` + L2 norm for one query.
- exact.nN.*, query.nN.*: exact top-k over N synthetic unit vectors with numpy
  (`X @ q` + argpartition), alone and after the text tower. The vectors and
  the text-like / image-like recall queries are dualsight's own (files in
  `vectors_dir`); without them, a draw of the same kind of mixture (same
  parameters, numpy's RNG).
- With hnswlib importable (optional): build time, memory, recall@k and latency
  at the same M / ef_construction / ef_search, and queries/s at recall >= 0.95.
- With onnxruntime importable (optional): the same towers (features + L2
  norm) exported with `torch.onnx`, the export checked against PyTorch
  (cosine >= 0.9999), run by ONNX Runtime's CPU provider in f32 with the same
  threads and all graph optimisations: vision.bN.images_per_s.onnxruntime and
  text.p50_ms.onnxruntime / p99, each `versus` dualsight's figure. ONNX
  Runtime is what CPU deployments run instead of PyTorch (immich's
  machine-learning service, clip-as-service).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

# Thread counts must be set before numpy / torch start their pools.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--params")
_known, _ = _pre.parse_known_args()
if _known.params:
    try:
        with open(_known.params) as _f:
            _threads = str(json.load(_f).get("threads", 1))
        for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[_v] = _threads
    except OSError:
        pass
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

SECTION_VISION = "1. vision tower, pixels ready (embed_images)"
SECTION_INGEST = "2. indexing 4000×3000 JPEGs"
SECTION_TEXT = "3. text queries"


def eprint(*a):
    print("reference:", *a, file=sys.stderr, flush=True)


def human_count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def size_section(n: int) -> str:
    return f"3. text queries, {human_count(n)} stored vectors"


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Figures:
    def __init__(self):
        self.items: list[dict] = []

    def add(self, key, value, *, label=None, unit=None, better=None, section=None, note=None,
            versus=None):
        """`versus`: the key of dualsight's figure this one is compared with,
        for a reference figure dualsight has no twin of (another way to do
        the same work)."""
        self.items.append(
            {
                "key": key,
                "value": None if value is None else float(value),
                "label": label,
                "unit": unit,
                "better": better,
                "section": section,
                "note": note,
                "versus": versus,
            }
        )

    def latency(self, prefix, seconds, *, section=None, what=None, note=None):
        if not seconds:
            return
        ms = np.asarray(seconds) * 1e3
        # np.percentile's default (linear) is what dualsight computes too.
        self.add(f"{prefix}.p50_ms", np.percentile(ms, 50), label=f"{what}, p50" if what else None,
                 unit="ms", better="lower", section=section, note=note)
        self.add(f"{prefix}.p99_ms", np.percentile(ms, 99), label=f"{what}, p99" if what else None,
                 unit="ms", better="lower", section=section)


def measure(p, fn):
    """One warm-up call, then repeat until min_secs and min_iters (at most max_iters)."""
    fn()
    out = []
    start = time.perf_counter()
    while len(out) < max(p["max_iters"], 1) and (
        len(out) < max(p["min_iters"], 1) or time.perf_counter() - start < p["min_secs"]
    ):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def time_each(fn, items):
    """Seconds of `fn(item)` for each item, after one warm-up call."""
    fn(items[0])
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t)
    return out


# ---- decode workers (module level: picklable for multiprocessing) ------------

_WORKER_IP = None


def _init_worker(model_dir: str):
    global _WORKER_IP
    os.environ["OMP_NUM_THREADS"] = "1"
    warnings.filterwarnings("ignore")
    from transformers import AutoImageProcessor

    _WORKER_IP = AutoImageProcessor.from_pretrained(model_dir, backend="pil")


def _preprocess(path: str):
    from transformers.image_utils import load_image

    return _WORKER_IP(load_image(path), return_tensors="np")["pixel_values"][0]


def _noop(_):
    return None


# ---- synthetic vectors --------------------------------------------------------


GAP = 3.0  # modality-gap shift of text-like queries (cos ≈ 0.3 to their draw)
DATA, QUERIES, TEXT_QUERIES = 1, 2, 3


class Mixture:
    """The same kind of data as dualsight's `Mixture::for_size` (same
    parameters, numpy's RNG): one cluster per 1000 vectors (10..=1000), a 32-d
    latent subspace per cluster with spread 0.8, isotropic noise 0.8,
    normalised. Stream 2: image-like queries (held-out draws); stream 3:
    text-like queries (held-out draws shifted by GAP along one fixed direction)."""

    def __init__(self, n: int, dim: int, seed: int, latent=32, spread=0.8, noise=0.8):
        self.dim, self.latent, self.spread, self.noise = dim, latent, spread, noise
        self.clusters = min(max(n // 1000, 10), 1000)
        r = np.random.default_rng(seed)
        c = r.standard_normal((self.clusters, dim), dtype=np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        b = r.standard_normal((self.clusters, latent, dim), dtype=np.float32)
        self.bases = b / np.linalg.norm(b, axis=2, keepdims=True)
        g = r.standard_normal(dim).astype(np.float32)
        self.gap = g / np.linalg.norm(g)
        self.seed = seed

    def points(self, stream: int, n: int, chunk: int = 65536):
        r = np.random.default_rng([self.seed, stream])
        out = np.empty((n, self.dim), dtype=np.float32)
        s = self.spread / np.sqrt(self.latent)
        k = self.noise / np.sqrt(self.dim)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            cid = r.integers(0, self.clusters, m)
            z = r.standard_normal((m, self.latent), dtype=np.float32) * s
            x = self.centres[cid] + k * r.standard_normal((m, self.dim), dtype=np.float32)
            x += np.einsum("ml,mld->md", z, self.bases[cid], optimize=True)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            if stream == TEXT_QUERIES:
                x += GAP * self.gap
                x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start:start + m] = x
        return out


def shared_vectors(p, n, dim, nq):
    """The stored vectors and recall queries dualsight searched (its
    `search::shared_vectors`: raw little-endian f32 rows), or None."""
    d = p.get("vectors_dir")
    if not d:
        return None
    parts = []
    for part, rows in (("data", n), ("text", nq), ("image", nq)):
        path = os.path.join(d, f"vectors-n{n}-{part}.f32")
        if not os.path.exists(path):
            return None
        a = np.fromfile(path, dtype="<f4")
        if a.size != rows * dim:
            raise SystemExit(f"{path}: {a.size} floats, expected {rows} x {dim}")
        parts.append(a.reshape(rows, dim))
    return tuple(parts)


def exact_topk(X, q, k):
    s = X @ q
    k = min(k, len(s))
    idx = np.argpartition(-s, k - 1)[:k]
    return idx[np.argsort(-s[idx])]


# ---- main ------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True, help="JSON written by dualsight-bench")
    ap.add_argument("--out", required=True, help="where to write the figures (JSON)")
    args = ap.parse_args()
    with open(args.params) as f:
        p = json.load(f)

    import PIL
    import torch
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer, VisionTextDualEncoderModel
    from transformers.image_utils import load_image
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    threads = int(p["threads"])
    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float32)
    sections = set(p["sections"])
    figs = Figures()
    notes: list[str] = []
    model_dir = str(p["model"])

    eprint(f"loading {model_dir} with transformers {transformers.__version__}, torch {torch.__version__}, "
           f"{threads} threads")
    t = time.perf_counter()
    model = VisionTextDualEncoderModel.from_pretrained(model_dir).eval()
    figs.add("model.load_s", time.perf_counter() - t, note="from_pretrained, no content hash")
    # The device and dtype dualsight's model runs in: the same GPU when torch
    # has one, bf16/f16 through torch.autocast there. On the CPU the
    # reference stays f32 (dualsight's CPU half keeps only weights half).
    want_device = str(p.get("device", "cpu"))
    dev = torch.device("cpu")
    if want_device.startswith("cuda"):
        if torch.cuda.is_available():
            dev = torch.device(want_device)
        else:
            notes.append(f"reference on the CPU: torch has no CUDA for {want_device}")
    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(str(p.get("dtype", "f32")))
    if half is not None and dev.type != "cuda":
        notes.append("reference in f32 (half precision only through autocast on CUDA)")
        half = None
    model = model.to(dev)
    if dev.type == "cuda":
        notes.append(f"reference on {torch.cuda.get_device_name(dev)}"
                     + (f", autocast {half}" if half is not None else ", f32"))

    def run_on_device(fn):
        with torch.autocast(dev.type, dtype=half, enabled=half is not None):
            out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out
    ip = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    if not type(ip).__name__.endswith("Pil"):
        raise SystemExit(f"image processor is {type(ip).__name__}, not a PIL-backend class")
    tok = AutoTokenizer.from_pretrained(model_dir)

    def features(out):
        # transformers 5 returns a model output whose pooler_output is the projection.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def embed_images(px):
        def go():
            f = features(model.get_image_features(pixel_values=px.to(dev))).float()
            return f / f.norm(dim=-1, keepdim=True)
        return run_on_device(go)

    def embed_text(text):
        enc = tok([text], return_tensors="pt")
        kw = {k: v.to(dev) for k, v in enc.items()
              if k in ("input_ids", "attention_mask", "token_type_ids")}

        def go():
            f = features(model.get_text_features(**kw)).float()
            return (f / f.norm(dim=-1, keepdim=True))[0]
        return run_on_device(go)

    vc = model.config.vision_config
    size = vc.image_size if isinstance(vc.image_size, int) else vc.image_size[0]
    chans = getattr(vc, "num_channels", 3)
    rng = np.random.default_rng(int(p["seed"]))

    ort_version = None
    with torch.inference_mode():
        # 1. vision tower
        if "vision" in sections:
            for b in p["batches"]:
                px = torch.from_numpy(rng.uniform(-1, 1, (b, chans, size, size)).astype(np.float32))
                eprint(f"vision tower, batch {b}")
                times = measure(p, lambda: embed_images(px))
                figs.add(f"vision.b{b}.images_per_s", b / float(np.median(times)),
                         note=f"median of {len(times)}")

        # 2. decode + preprocess, end to end
        files = [str(f) for f in p.get("jpegs") or []]
        if "ingest" in sections and files:
            eprint("decode + preprocess, one thread")
            dec, pre, tot = [], [], []

            def one_pass():
                dec.clear()
                pre.clear()
                tot.clear()
                for f in files:
                    t0 = time.perf_counter()
                    img = load_image(f)
                    t1 = time.perf_counter()
                    ip(img, return_tensors="np")
                    t2 = time.perf_counter()
                    dec.append(t1 - t0)
                    pre.append(t2 - t1)
                    tot.append(t2 - t0)

            measure(p, one_pass)
            figs.add("decode.ms_per_image", np.median(tot) * 1e3)
            figs.add("decode.decode_ms", np.median(dec) * 1e3)
            figs.add("decode.preprocess_ms", np.median(pre) * 1e3)

            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Pool(threads, initializer=_init_worker, initargs=(model_dir,)) as pool:
                pool.map(_noop, range(threads))  # workers started and initialised
                eprint(f"decode + preprocess, pool of {threads} processes")
                walls = measure(p, lambda: pool.map(_preprocess, files, chunksize=1))
                figs.add("decode.images_per_s", len(files) / float(np.median(walls)),
                         note=f"multiprocessing pool of {threads}")
                B = int(p["ingest_batch"])

                def index_all():
                    for i in range(0, len(files), B):
                        arrs = pool.map(_preprocess, files[i:i + B], chunksize=1)
                        embed_images(torch.from_numpy(np.stack(arrs)))

                eprint(f"end to end, batches of {B}")
                walls = measure(p, index_all)
                figs.add("ingest.images_per_s", len(files) / float(np.median(walls)),
                         note="pool decode, then forward; no store")

            def index_inline():
                for i in range(0, len(files), B):
                    arrs = [ip(load_image(f), return_tensors="np")["pixel_values"][0]
                            for f in files[i:i + B]]
                    embed_images(torch.from_numpy(np.stack(arrs)))

            eprint(f"end to end, decoded in this process, batches of {B}")
            walls = measure(p, index_inline)
            figs.add("ingest.inline_images_per_s", len(files) / float(np.median(walls)),
                     label="  end to end, no pool: decode file after file, then forward (a plain loop)",
                     versus="ingest.images_per_s", note="no store")

        # 3. text queries
        texts = p["texts"]
        if "search" in sections:
            eprint(f"text tower latency, {len(texts)} queries")
            figs.latency("text", time_each(embed_text, texts))

        if dev.type == "cuda":
            notes.append("no ONNX Runtime figures beside a GPU run (run with --device cpu for them)")
        elif "vision" in sections or "search" in sections:
            ort_version = onnx_runtime_figures(
                figs, notes, p, model, tok, features, embed_images, embed_text,
                (chans, size), threads, rng, texts, sections)

        try:
            import hnswlib  # optional
        except ImportError:
            hnswlib = None
            if "search" in sections:
                notes.append("hnswlib not installed: no HNSW reference (pip install hnswlib)")

        dim = int(model.config.projection_dim)
        k = int(p["k"])
        if "search" in sections:
            for n in sorted(set(int(s) for s in p["sizes"])):
                nq = max(int(p["recall_queries"]), 1)
                shared = shared_vectors(p, n, dim, nq)
                if shared is not None:
                    eprint(f"{n} vectors: dualsight's, from {p['vectors_dir']}")
                    X, Q, QI = shared
                else:
                    eprint(f"{n} vectors: generating")
                    mix = Mixture(n, dim, int(p["seed"]))
                    X = mix.points(DATA, n)
                    Q = mix.points(TEXT_QUERIES, nq)
                    QI = mix.points(QUERIES, nq)
                    notes.append(f"{n} vectors: dualsight shared none, drawn here (another draw of the same mixture)")
                exact = [exact_topk(X, q, k) for q in Q]
                lat = []
                for q in Q[:50]:
                    t0 = time.perf_counter()
                    exact_topk(X, q, k)
                    lat.append(time.perf_counter() - t0)
                figs.latency(f"exact.n{n}", lat, note="numpy X @ q + argpartition")
                eprint(f"{n} vectors: {len(texts)} text queries + exact search")
                exact_topk(X, embed_text(texts[0]).numpy(), k)
                lat = []
                for t in texts:
                    t0 = time.perf_counter()
                    exact_topk(X, embed_text(t).numpy(), k)
                    lat.append(time.perf_counter() - t0)
                figs.latency(f"query.n{n}", lat, note="text tower + numpy exact search")
                if hnswlib is not None:
                    exact_i = [exact_topk(X, q, k) for q in QI]
                    hnsw_figures(hnswlib, figs, p, n, X, (Q, exact), (QI, exact_i), k, threads)
                del X

    if not os.environ.get("OMP_WAIT_POLICY"):
        notes.append("OMP_WAIT_POLICY unset: OpenMP threads spin while waiting, which is fastest on an idle "
                     "machine and several times slower on a busy one (export OMP_WAIT_POLICY=PASSIVE there)")
    else:
        notes.append(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    info = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
        "image_processor": type(ip).__name__,
        "notes": notes,
    }
    if ort_version:
        info["versions"]["onnxruntime"] = ort_version
    try:
        import hnswlib  # noqa: F811

        info["versions"]["hnswlib"] = getattr(hnswlib, "__version__", "installed")
    except ImportError:
        pass
    with open(args.out, "w") as f:
        json.dump({"figures": figs.items, "info": info}, f, indent=2)
    eprint(f"wrote {args.out}")


def onnx_runtime_figures(figs, notes, p, model, tok, features, embed_images, embed_text, shape, threads,
                         rng, texts, sections):
    """The vision and text towers under ONNX Runtime (f32, CPU provider, same
    threads); returns its version, or None when it is not importable."""
    try:
        import onnxruntime as ort
    except ImportError:
        notes.append("onnxruntime not importable: no ONNX Runtime figures")
        return None
    import tempfile

    import torch

    chans, size = shape

    class Vision(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            f = features(self.m.get_image_features(pixel_values=pixel_values))
            return f / f.norm(dim=-1, keepdim=True)

    enc = tok([texts[0]], return_tensors="pt")
    text_inputs = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            f = features(self.m.get_text_features(**dict(zip(text_inputs, args))))
            return f / f.norm(dim=-1, keepdim=True)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def export(module, args, names, dynamic, path):
        # Traced outside inference mode (the caller's): a text tower traced
        # inside it came out wrong (cosine 0.88 against PyTorch).
        with torch.inference_mode(False), torch.no_grad():
            args = tuple(a.clone() for a in args)
            torch.onnx.export(module.eval(), args, path, input_names=names, output_names=["embeds"],
                              dynamic_axes={**dynamic, "embeds": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def check(what, want, got):
        cos = float(np.min(np.sum(want * got, axis=-1)))
        if cos < 0.9999:
            raise SystemExit(f"ONNX export of the {what} tower disagrees with PyTorch: cosine {cos}")
        notes.append(f"ONNX Runtime {what} tower: min cosine against PyTorch {cos:.6f}")

    with tempfile.TemporaryDirectory() as d:
        if "vision" in sections:
            eprint("ONNX Runtime: exporting the vision tower")
            px = torch.from_numpy(rng.uniform(-1, 1, (2, chans, size, size)).astype(np.float32))
            sess = export(Vision(model), (px,), ["pixel_values"], {"pixel_values": {0: "batch"}},
                          os.path.join(d, "vision.onnx"))
            check("vision", embed_images(px).numpy(), sess.run(None, {"pixel_values": px.numpy()})[0])
            for b in p["batches"]:
                x = rng.uniform(-1, 1, (b, chans, size, size)).astype(np.float32)
                eprint(f"ONNX Runtime vision tower, batch {b}")
                times = measure(p, lambda: sess.run(None, {"pixel_values": x}))
                figs.add(f"vision.b{b}.images_per_s.onnxruntime", b / float(np.median(times)),
                         label=f"batch {b}, against ONNX Runtime {ort.__version__} (f32)",
                         versus=f"vision.b{b}.images_per_s", note=f"median of {len(times)}")
            del sess
        if "search" in sections:
            eprint("ONNX Runtime: exporting the text tower")
            args = tuple(enc[k] for k in text_inputs)
            dyn = {k: {0: "batch", 1: "tokens"} for k in text_inputs}
            sess = export(Text(model), args, text_inputs, dyn, os.path.join(d, "text.onnx"))

            def run(t):
                e = tok([t], return_tensors="np")
                return sess.run(None, {k: e[k].astype(np.int64) for k in text_inputs})[0][0]

            check("text", embed_text(texts[0]).numpy()[None], run(texts[0])[None])
            ms = np.asarray(time_each(run, texts)) * 1e3
            for q in (50, 99):
                figs.add(f"text.p{q}_ms.onnxruntime", np.percentile(ms, q),
                         label=f"text tower p{q}, against ONNX Runtime {ort.__version__} (f32)",
                         unit="ms", better="lower", versus=f"text.p{q}_ms")
    return ort.__version__


def hnsw_figures(hnswlib, figs, p, n, X, text_q, image_q, k, threads):
    ix = p["index"]
    sec = size_section(n)
    eprint(f"{n} vectors: hnswlib build")
    r0 = rss_bytes()
    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=X.shape[1])
    index.init_index(max_elements=n, M=int(ix["m"]), ef_construction=int(ix["ef_construction"]), random_seed=1)
    index.set_num_threads(threads)
    index.add_items(X, np.arange(1, n + 1))
    build = time.perf_counter() - t
    r1 = rss_bytes()
    figs.add(f"index.n{n}.build_s", build, note="hnswlib")
    figs.add(f"index.n{n}.inserts_per_s", n / build)
    if n >= 50_000 and r1 > r0:
        # Below that, freed numpy buffers reused by the allocator hide the index.
        figs.add(f"index.n{n}.bytes_per_vector", (r1 - r0) / n, note="hnswlib")
    index.set_num_threads(1)
    efs = [int(ix["ef_search"])] + [int(e) for e in p.get("ef_sweep", []) if int(e) != int(ix["ef_search"])]

    def run(ef, queries=text_q):
        Q, exact = queries
        index.set_ef(max(ef, k))
        lat, rec = [], []
        index.knn_query(Q[:1], k=k)
        for q, e in zip(Q, exact):
            t0 = time.perf_counter()
            labels, _ = index.knn_query(q[None, :], k=k)
            lat.append(time.perf_counter() - t0)
            got = set(int(x) - 1 for x in labels[0])
            rec.append(len(got & set(int(x) for x in e)) / len(e))
        return lat, float(np.mean(rec))

    for ef in efs:
        lat, rec = run(ef)
        figs.add(f"search.n{n}.ef{ef}.recall{k}", rec)
        figs.add(f"search.n{n}.ef{ef}.recall{k}_image", run(ef, image_q)[1])
        figs.latency(f"search.n{n}.ef{ef}", lat, note="hnswlib")
    for ef in SWEEP:
        lat, rec = run(ef)
        if rec >= 0.95:
            figs.add(f"search.n{n}.qps_at_recall95", 1.0 / float(np.mean(lat)),
                     note=f"hnswlib ef {ef}, recall {rec:.3f}", section=sec)
            break
    else:
        figs.add(f"search.n{n}.qps_at_recall95", None, note="hnswlib never reached 0.95")


# ef_search values tried, smallest first, for "queries/s at recall >= 0.95".
SWEEP = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


if __name__ == "__main__":
    main()
