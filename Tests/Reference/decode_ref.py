"""PyTorch reference for `ddp bench decode`: token-by-token greedy decoding of the W2 model (decoder-only, d 384,
6 heads, 6 layers, ff 1536, vocab 256, context 256, pre-norm, GELU, learned positions, tied) at batch 1, with a
key/value cache and without one (the whole prefix rerun per token), never stopping at EOS.
Prints one JSON line: tokens/s of both ways (median of --rounds) and whether they chose the same tokens.
Usage: python Tests/Reference/decode_ref.py [--threads N] [--context T] [--rounds R]
"""
import argparse, json, math, statistics, time
import torch, torch.nn as nn, torch.nn.functional as F

V, D, H, L, FF = 256, 384, 6, 6, 1536


class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.norm1, s.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        s.qkv, s.o = nn.Linear(D, 3 * D), nn.Linear(D, D)
        s.fc1, s.fc2 = nn.Linear(D, FF), nn.Linear(FF, D)

    def attend(s, x, cache=None, position=None):
        B, T, _ = x.shape
        q, k, v = s.qkv(s.norm1(x)).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys, values = cache
            keys[:, :, position:position + 1] = k; values[:, :, position:position + 1] = v
            y = F.scaled_dot_product_attention(q, keys[:, :, :position + 1], values[:, :, :position + 1])
        x = x + s.o(y.transpose(1, 2).reshape(B, T, D))
        return x + s.fc2(F.gelu(s.fc1(s.norm2(x))))


class GPT(nn.Module):
    def __init__(s, context):
        super().__init__()
        s.tok, s.pos = nn.Embedding(V, D), nn.Embedding(context, D)
        s.blocks = nn.ModuleList(Block() for _ in range(L)); s.norm = nn.LayerNorm(D)

    def logits(s, x):
        return s.norm(x) @ s.tok.weight.t()

    def uncached(s, tokens):
        x = s.tok(tokens) + s.pos.weight[: tokens.shape[1]]
        for block in s.blocks: x = block.attend(x)
        return s.logits(x[:, -1])

    def cached(s, token, position, caches):
        x = s.tok(token) + s.pos.weight[position]
        for block, cache in zip(s.blocks, caches): x = block.attend(x, cache, position)
        return s.logits(x[:, -1])


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=256); ap.add_argument("--rounds", type=int, default=3); a = ap.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    model = GPT(a.context).eval()
    times = {"cached": [], "uncached": []}; outputs = {}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for way in ("cached", "uncached"):
                tokens = torch.full((1, 1), 2, dtype=torch.long)
                caches = [(torch.zeros(1, H, a.context, D // H), torch.zeros(1, H, a.context, D // H)) for _ in range(L)]
                start = time.perf_counter()
                for position in range(a.context):
                    logits = model.cached(tokens[:, -1:], position, caches) if way == "cached" else model.uncached(tokens)
                    logits[:, 0] = -math.inf  # never PAD, as ddp decodes
                    tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
                times[way].append(time.perf_counter() - start); outputs[way] = tokens
    print(json.dumps({"impl": "pytorch-" + torch.__version__, "workload": "W2", "threads": a.threads, "context": a.context,
                      "cached_tokens_per_s": round(a.context / statistics.median(times["cached"]), 1),
                      "uncached_tokens_per_s": round(a.context / statistics.median(times["uncached"]), 1),
                      "same_tokens": bool(torch.equal(outputs["cached"], outputs["uncached"]))}))


if __name__ == "__main__":
    main()
