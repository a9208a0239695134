"""Linear-probe ceiling for the empathy heads: logistic regression on the frozen pooled hidden states.

Tells how much of the heads' accuracy the base model's features give for free, and so whether a head
that scores below it is undertrained (it was, before the heads got their own learning rate).

    python benchmarks/head_probe.py [ADAPTER_DIR]     # no adapter: the base model's features

Prints accuracy vs majority class on 600 held-out examples, per pooling (last prompt token, mean over the
last user turn, both concatenated), with 3000 training examples per head.
"""

import random
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from tunesmith.config import load_config
from tunesmith.data.batching import collate, sorted_batches
from tunesmith.data.chat import encode
from tunesmith.modeling.forward import decoder_hidden
from tunesmith.modeling.heads import Heads
from tunesmith.modeling.loading import load_for_inference
from tunesmith.recipes import empathy

torch.manual_seed(0)
cfg = load_config("configs/empathy-cpu.yaml")
cfg.data.empathy.limit_eval = 600
train, held = empathy.load_sources(cfg)
print({k: len(v) for k, v in train.items()}, {k: len(v) for k, v in held.items()}, flush=True)
adapter = sys.argv[1] if len(sys.argv) > 1 else None  # the adapter folder holds the base model ref too
model, tok, _ = load_for_inference(adapter, "builtin:smollm2-135m-instruct")
model.eval()
POOLINGS = {
    "last": Heads(1, False, False, pooling="last_prompt_token"),
    "mean": Heads(1, False, False, pooling="mean_last_user"),
}  # only their .pool is used


def feats(exs):
    enc = [encode(tok, x, cfg.data.max_length, cfg.data.system_prompt, train_on="last") for x in exs]
    res = {k: [None] * len(enc) for k in POOLINGS}
    with torch.no_grad():
        for idx in sorted_batches(enc, 32):
            batch = collate([enc[i] for i in idx], tok.pad_token_id)
            h = decoder_hidden(model, batch["input_ids"], batch["attention_mask"]).float()
            for k, pooler in POOLINGS.items():
                pooled = pooler.pool(h, batch["pool_index"], batch["user_span"])
                for j, i in enumerate(idx):
                    res[k][i] = pooled[j].numpy()
    return {k: np.stack(v) for k, v in res.items()}


for head, src in [("emotion", "goemotions"), ("strategy", "esconv")]:
    tr = [x for x in train[src] if getattr(x, head) is not None]
    random.Random(0).shuffle(tr)
    tr = tr[:3000]
    he = [x for x in held[src] if getattr(x, head) is not None]
    t = time.time()
    ftr, fhe = feats(tr), feats(he)
    ytr = np.array([getattr(x, head) for x in tr])
    yhe = np.array([getattr(x, head) for x in he])
    maj = (yhe == np.bincount(ytr).argmax()).mean()
    for k in ("last", "mean", "cat"):
        Xtr = np.concatenate([ftr["last"], ftr["mean"]], 1) if k == "cat" else ftr[k]
        Xhe = np.concatenate([fhe["last"], fhe["mean"]], 1) if k == "cat" else fhe[k]
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
        clf = LogisticRegression(max_iter=2000, C=0.05).fit((Xtr - mu) / sd, ytr)
        acc = (clf.predict((Xhe - mu) / sd) == yhe).mean()
        print(
            f"{head} {k}: acc {acc:.3f} majority {maj:.3f} ratio {acc / maj:.2f} ({time.time() - t:.0f}s)", flush=True
        )
