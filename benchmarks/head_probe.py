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
from tunesmith.recipes import empathy
from tunesmith.modeling.multitask import load_for_inference, decoder_hidden
from tunesmith.data.chat import encode
from tunesmith.training.trainer import collate
torch.manual_seed(0)
cfg = load_config("configs/empathy-cpu.yaml")
cfg.data.empathy.limit_eval = 600
train, held = empathy.load_sources(cfg)
print({k: len(v) for k, v in train.items()}, {k: len(v) for k, v in held.items()}, flush=True)
adapter = sys.argv[1] if len(sys.argv) > 1 else None  # the adapter folder holds the base model ref too
model, tok, _ = load_for_inference(adapter, "builtin:smollm2-135m-instruct")
model.eval()
def feats(exs):
    enc = [encode(tok, x, cfg.data.max_length, cfg.data.system_prompt, train_on="last") for x in exs]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))
    res = {"last": [None]*len(enc), "mean": [None]*len(enc)}
    with torch.no_grad():
        for b in range(0, len(order), 32):
            idx = order[b:b+32]
            batch = collate([enc[i] for i in idx], tok.pad_token_id)
            h = decoder_hidden(model, batch["input_ids"], batch["attention_mask"]).float()
            rows = torch.arange(h.shape[0])
            last = h[rows, batch["pool_index"]]
            span = batch["user_span"]
            pos = torch.arange(h.shape[1])
            m = ((pos[None] >= span[:, :1]) & (pos[None] < span[:, 1:2])).float()
            mean = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
            for j, i in enumerate(idx):
                res["last"][i] = last[j].numpy(); res["mean"][i] = mean[j].numpy()
    return {k: np.stack(v) for k, v in res.items()}
for head, src in [("emotion", "goemotions"), ("strategy", "esconv")]:
    tr = [x for x in train[src] if getattr(x, head) is not None]
    random.Random(0).shuffle(tr); tr = tr[:3000]
    he = [x for x in held[src] if getattr(x, head) is not None]
    t = time.time()
    ftr, fhe = feats(tr), feats(he)
    ytr = np.array([getattr(x, head) for x in tr]); yhe = np.array([getattr(x, head) for x in he])
    maj = (yhe == np.bincount(ytr).argmax()).mean()
    for k in ("last", "mean", "cat"):
        Xtr = np.concatenate([ftr["last"], ftr["mean"]], 1) if k == "cat" else ftr[k]
        Xhe = np.concatenate([fhe["last"], fhe["mean"]], 1) if k == "cat" else fhe[k]
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
        clf = LogisticRegression(max_iter=2000, C=0.05).fit((Xtr-mu)/sd, ytr)
        acc = (clf.predict((Xhe-mu)/sd) == yhe).mean()
        print(f"{head} {k}: acc {acc:.3f} majority {maj:.3f} ratio {acc/maj:.2f} ({time.time()-t:.0f}s)", flush=True)
