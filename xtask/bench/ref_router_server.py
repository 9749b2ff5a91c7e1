#!/usr/bin/env python3
"""The routing service a Python user would write instead of `mappo serve`: FastAPI + uvicorn,
sentence-transformers all-MiniLM-L6-v2, the same MLP loaded from a mappo checkpoint's safetensors,
probabilities floored at MIN_PROB, the agent sampled, every decision committed to SQLite (WAL)
before the answer. Same API shape as the serve issue: POST /v1/route {"text"} and /v1/feedback.
Usage: ref_router_server.py MODEL_DIR CHECKPOINT DB PORT

`cargo xtask bench-serve` runs it side by side with `mappo serve` (the project's reference
baseline, kept here so that the benchmark needs nothing outside the repository). Needs
`pip install torch sentence-transformers fastapi uvicorn safetensors` (the xtask makes a venv)."""
import json, sqlite3, sys, threading, uuid

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer

model_dir, ckpt, db_path, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
MIN_PROB = 0.01
st = SentenceTransformer(model_dir, device="cpu")
w = {k[len("policy."):]: v for k, v in load_file(ckpt).items() if k.startswith("policy.")}
n_agents = w["policy_head.bias"].shape[0]
db = sqlite3.connect(db_path, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS decisions (id TEXT PRIMARY KEY, action INT, probs TEXT, emb BLOB)")
db.execute("CREATE TABLE IF NOT EXISTS rewards (id TEXT PRIMARY KEY, reward REAL)")
lock = threading.Lock()
rng = np.random.default_rng(0)
app = FastAPI()


def policy(x):
    if "encoder.projection.weight" in w:
        x = x @ w["encoder.projection.weight"].T + w["encoder.projection.bias"]
    h = np.maximum(x @ w["encoder.0.weight"].T + w["encoder.0.bias"], 0)
    h = np.maximum(h @ w["encoder.1.weight"].T + w["encoder.1.bias"], 0)
    z = h @ w["policy_head.weight"].T + w["policy_head.bias"]
    p = np.exp(z - z.max()); p /= p.sum()
    p = np.maximum(p, MIN_PROB); return p / p.sum()


class Route(BaseModel):
    text: str


class Feedback(BaseModel):
    decision_id: str
    reward: float


@app.post("/v1/route")
def route(r: Route):
    emb = st.encode([r.text], normalize_embeddings=True)[0].astype(np.float32)
    p = policy(emb)
    with lock:
        a = int(rng.choice(n_agents, p=p))
        did = str(uuid.uuid4())
        db.execute("INSERT INTO decisions VALUES (?,?,?,?)", (did, a, json.dumps(p.tolist()), emb.tobytes()))
        db.commit()
    return {"decision_id": did, "agent_index": a, "probabilities": p.tolist(), "propensity": float(p[a])}


@app.post("/v1/feedback")
def feedback(f: Feedback):
    with lock:
        if db.execute("SELECT 1 FROM decisions WHERE id=?", (f.decision_id,)).fetchone() is None:
            raise HTTPException(404, "unknown decision")
        db.execute("INSERT INTO rewards VALUES (?,?)", (f.decision_id, f.reward))
        db.commit()
    return {"decision_id": f.decision_id, "accepted": True}


@app.get("/healthz")
def healthz():
    return {"ok": True}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
