"""kvstash.transformers: restoring stored prefixes into transformers' DynamicCache.

Runs where torch and transformers are installed (the GPU machine; CI has neither: PyPI's
torch for Linux is the multi-gigabyte CUDA build). Models are small randomly initialised
models of real architectures (Llama, Qwen2, Mistral): the identity checks below need no
trained weights. On a GPU the model runs there (CUDA IPC); otherwise on the CPU (shared
memory).
"""

import socket

import pytest

import kvstash

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from kvstash.transformers import PrefixCache, generate_with_prefix_cache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
C = 32  # chunk tokens


def tiny(arch="llama", dtype=torch.bfloat16, **extra):
    kw = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              max_position_embeddings=2048)
    kw.update(extra)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "sdpa" if DEVICE == "cuda" else "eager"
    return model_cls(cfg).to(device=DEVICE, dtype=dtype).eval()


def prompt(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 512, (1, n), generator=g).to(DEVICE)


@pytest.fixture
def hf_client(client):
    if DEVICE == "cuda":
        probe = torch.zeros(16, dtype=torch.float16, device="cuda")
        try:
            client.unregister(client.register_cuda(probe))
        except kvstash.Error as e:
            pytest.skip(f"daemon cannot take CUDA IPC here: {e}")
    return client


def own_cache(model, ids, t):
    """transformers' own prefix cache: the model computes the first t tokens."""
    c = transformers.DynamicCache(config=model.config)
    model(input_ids=ids[:, :t], past_key_values=c, use_cache=True)
    return c


def greedy(model, ids, cache=None, n=8):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                          max_new_tokens=n, do_sample=False, pad_token_id=0)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("length", [3 * C + 5, 4 * C, 2 * C + 1, C - 3])
def test_fp16_restore_is_token_identical(hf_client, arch, length):
    model = tiny(arch, sliding_window=None) if arch != "llama" else tiny(arch)
    pc = PrefixCache(hf_client, model, chunk_tokens=C, codec="fp16")
    ids = prompt(length, seed=length)
    want = greedy(model, ids)
    # First request: nothing stored; computes and stores the whole chunks.
    first = generate_with_prefix_cache(model, pc, ids, max_new_tokens=8, do_sample=False,
                                       pad_token_id=0)
    assert torch.equal(first, want)
    assert pc.stats.stored_chunks == length // C
    # Second request: restores every whole chunk (leaving at least one token).
    cache, t = pc.restore(ids)
    expect = min(length // C * C, length - 1) if length >= C else 0
    assert t == expect
    if t:
        assert cache.get_seq_length() == t
        # The restored K/V equal the model's own, bit for bit (fp16 preset, bf16 model).
        ref = transformers.DynamicCache(config=model.config)
        model(input_ids=ids[:, :t], past_key_values=ref, use_cache=True)
        for a, b in zip(cache.layers, ref.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        # First-step logits: restored prefix + the rest vs the full prefill.
        full = model(input_ids=ids).logits[0, -1].float()
        part = model(input_ids=ids[:, t:], past_key_values=cache, use_cache=True).logits[0, -1].float()
        assert (full - part).abs().max().item() <= 2e-2 * max(1.0, full.abs().max().item())
    again = generate_with_prefix_cache(model, pc, ids, max_new_tokens=8, do_sample=False,
                                       pad_token_id=0)
    if t:
        # Exactly what transformers' own prefix caching gives: the same prefix computed by
        # the model into a DynamicCache, then generate. The restored K/V are bit-identical
        # to that cache, so the tokens are too, on every device.
        assert torch.equal(again, greedy(model, ids, own_cache(model, ids, t)))
    # Against a full prefill without any cache: the first new token always agrees; on the
    # CPU the whole greedy continuation does too. On a GPU, sdpa's kernels round a split
    # prefill (prefix, then the rest) differently from a full one, and the near-uniform
    # logits of random weights can then flip a later argmax, with or without kvstash.
    assert again[0, length].item() == want[0, length].item()
    if DEVICE == "cpu":
        assert torch.equal(again, want)
    assert pc.stats.skipped_chunks >= length // C  # nothing was sent twice


@torch.no_grad()
def test_shared_prefix_between_prompts(hf_client):
    model = tiny()
    pc = PrefixCache(hf_client, model, chunk_tokens=C)
    base = prompt(3 * C, seed=1)
    generate_with_prefix_cache(model, pc, base, max_new_tokens=2, do_sample=False, pad_token_id=0)
    other = torch.cat([base[:, :2 * C], prompt(C + 7, seed=2)], dim=1)  # shares 2 chunks
    cache, t = pc.restore(other)
    assert t == 2 * C
    assert torch.equal(greedy(model, other, cache), greedy(model, other, own_cache(model, other, t)))


@torch.no_grad()
def test_lossy_preset_reports_agreement(hf_client):
    model = tiny()
    pc = PrefixCache(hf_client, model, chunk_tokens=C, codec="kivi-2")
    ids = prompt(4 * C + 3, seed=5)
    generate_with_prefix_cache(model, pc, ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
    cache, t = pc.restore(ids)
    assert t == 4 * C
    full = model(input_ids=ids).logits[0, -1]
    part = model(input_ids=ids[:, t:], past_key_values=cache, use_cache=True).logits[0, -1]
    # Random weights say nothing about quality; this checks the lossy path runs end to end
    # and stays finite. Agreement on real weights: bench/results/prefix-cache.md.
    assert torch.isfinite(part).all()
    assert part.shape == full.shape


@torch.no_grad()
def test_daemon_down_falls_back_and_counts(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = tiny()
    with kvstash.Client(f"127.0.0.1:{port}", namespace="down", timeout=2) as c:
        pc = PrefixCache(c, model, chunk_tokens=C)
        ids = prompt(3 * C + 1, seed=3)
        out = generate_with_prefix_cache(model, pc, ids, max_new_tokens=4, do_sample=False,
                                         pad_token_id=0)
        out2 = generate_with_prefix_cache(model, pc, ids, max_new_tokens=4, do_sample=False,
                                          pad_token_id=0)
    assert torch.equal(out, greedy(model, ids, n=4)) and torch.equal(out2, out)
    assert pc.stats.fallbacks == 4  # 2 restores + 2 stores
    logged = [r for r in caplog.records if "kvstash prefix cache" in r.getMessage()]
    assert len(logged) == 2  # once per kind (restore, store), not per request


@torch.no_grad()
def test_missing_chunk_after_lookup_shortens_the_prefix(hf_client):
    model = tiny()
    pc = PrefixCache(hf_client, model, chunk_tokens=C)
    ids = prompt(3 * C + 2, seed=4)
    generate_with_prefix_cache(model, pc, ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
    keys = kvstash.chunk_keys(ids[0].cpu().numpy(), C, hf_client.namespace)
    hf_client.delete([keys[1]])
    cache, t = pc.restore(ids)
    assert t == C
    assert torch.equal(greedy(model, ids, cache), greedy(model, ids, own_cache(model, ids, t)))


def test_refuses_unsupported_models(client):
    with pytest.raises(kvstash.Error, match="sliding-window"):
        PrefixCache(client, tiny("mistral", sliding_window=64))
    with pytest.raises(kvstash.Error, match="sliding_attention"):
        PrefixCache(client, tiny("qwen2", use_sliding_window=True, sliding_window=64,
                                 max_window_layers=1,
                                 layer_types=["full_attention", "sliding_attention",
                                              "sliding_attention"]))
    with pytest.raises(kvstash.Error, match="float32"):
        PrefixCache(client, tiny(dtype=torch.float32))
    with pytest.raises(kvstash.Error, match="head_dim"):
        PrefixCache(client, tiny(head_dim=16, hidden_size=64))
    pc = PrefixCache(client, tiny())
    with pytest.raises(kvstash.Error, match="batch of 2"):
        pc.restore(torch.zeros((2, 40), dtype=torch.long, device=DEVICE))
