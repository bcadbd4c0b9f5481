"""SwiftDDP's transformer in PyTorch, and loading a `ddp export` safetensors file into it.

The modules mirror Sources/Transformer with the same parameter names (README.md, "The model"), so an exported checkpoint loads
by name. Also evaluates on a SwiftDDP data directory (HDF5 shards), framed as training frames them, so the numbers
can be compared with `ddp eval`:

    ddp export --checkpoint runs/reverse --output reverse.safetensors
    python Tests/Reference/swiftddp_torch.py reverse.safetensors data/reverse --split valid

or from Python:

    from swiftddp_torch import load
    model, metadata = load("reverse.safetensors")      # a torch.nn.Module in eval mode
    logits = model(source, decoder_input)              # [B, T, vocab]

Needs torch and numpy (h5py for evaluation). Uses the `safetensors` package when it is installed, else reads the
format itself (8-byte little-endian header size, JSON header, raw little-endian data).
"""
import argparse, glob, json, math, os, struct, sys
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

PAD, BOS, EOS = 0, 1, 2


class Attention(nn.Module):
    def __init__(s, c, h):
        super().__init__(); s.h = h
        s.q_proj, s.k_proj, s.v_proj, s.o_proj = (nn.Linear(c, c) for _ in range(4))

    def forward(s, x, memory, causal, key_padding):
        B, Tq, C = x.shape; Tk = memory.shape[1]; D = C // s.h
        split = lambda t, T: t.view(B, T, s.h, D).transpose(1, 2)
        q, k, v = split(s.q_proj(x), Tq), split(s.k_proj(memory), Tk), split(s.v_proj(memory), Tk)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        if causal:
            scores = scores.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).triu(1), float("-inf"))
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # [B, H, Tq, Tk]
        if getattr(s, "keep_weights", False): s.weights = weights.detach()  # the attention-map fixtures ask for them
        out = weights @ v
        return s.o_proj(out.transpose(1, 2).reshape(B, Tq, C))


class FFN(nn.Module):
    def __init__(s, c, f, activation):
        super().__init__(); s.fc1, s.fc2 = nn.Linear(c, f), nn.Linear(f, c); s.act = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[activation]

    def forward(s, x):
        return s.fc2(s.act(s.fc1(x)))


class Layer(nn.Module):
    """Sublayers in order, each followed (post) or preceded (pre) by its norm: norm1, norm2, norm3."""
    def __init__(s, cfg, kinds):
        super().__init__(); c = cfg["d_model"]; s.kinds = kinds; s.pre = cfg["norm"] == "pre"
        for kind in kinds:
            setattr(s, kind, FFN(c, cfg["d_ff"], cfg["activation"]) if kind == "ffn" else Attention(c, cfg["heads"]))
        for i in range(len(kinds)):
            setattr(s, f"norm{i + 1}", nn.LayerNorm(c))

    def forward(s, x, memory, key_padding):
        for i, kind in enumerate(s.kinds):
            norm = getattr(s, f"norm{i + 1}"); sub = getattr(s, kind)
            def f(y):
                if kind == "ffn": return sub(y)
                if kind == "self_attn": return sub(y, y, causal=s.causal, key_padding=None if s.causal else key_padding)
                return sub(y, memory, causal=False, key_padding=key_padding)
            x = x + f(norm(x)) if s.pre else norm(x + f(x))
        return x


class Stack(nn.Module):
    def __init__(s, cfg, count, kinds, causal):
        super().__init__()
        s.layers = nn.ModuleList(Layer(cfg, kinds) for _ in range(count))
        for layer in s.layers: layer.causal = causal
        if cfg["norm"] == "pre": s.norm = nn.LayerNorm(cfg["d_model"])

    def forward(s, x, memory=None, key_padding=None):
        for layer in s.layers: x = layer(x, memory, key_padding)
        return s.norm(x) if hasattr(s, "norm") else x


def sinusoid(n, d):
    pe = np.zeros((n, d))
    for t in range(n):
        for i in range(0, d, 2):
            angle = t / 10000 ** (i / d)
            pe[t, i] = math.sin(angle); pe[t, i + 1] = math.cos(angle)
    return torch.tensor(pe, dtype=torch.float32)


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: LayerNorm(GELU(dense(h))), then the output projection (embedding or lm_head) plus `bias`."""
    def __init__(s, c, vocab):
        super().__init__(); s.dense, s.norm = nn.Linear(c, c), nn.LayerNorm(c); s.bias = nn.Parameter(torch.zeros(vocab))

    def forward(s, h):
        return s.norm(F.gelu(s.dense(h)))


class Model(nn.Module):
    def __init__(s, cfg):
        super().__init__(); s.cfg = cfg; c = cfg["d_model"]
        s.embed = nn.Embedding(cfg["vocab_size"], c)
        if cfg["positions"] == "learned": s.pos_embed = nn.Embedding(cfg["max_length"], c)
        else: s.register_buffer("pe", sinusoid(cfg["max_length"], c))
        if cfg["kind"] == "encoder-decoder":
            s.encoder = Stack(cfg, cfg["encoder_layers"], ["self_attn", "ffn"], causal=False)
            s.decoder = Stack(cfg, cfg["decoder_layers"], ["self_attn", "cross_attn", "ffn"], causal=True)
        elif cfg["kind"] == "encoder-only":
            s.encoder = Stack(cfg, cfg["encoder_layers"], ["self_attn", "ffn"], causal=False)
            s.mlm_head = MaskedLMHead(c, cfg["vocab_size"])
        else:
            s.decoder = Stack(cfg, cfg["decoder_layers"], ["self_attn", "ffn"], causal=True)
        if not cfg["tied_embeddings"]: s.lm_head = nn.Linear(c, cfg["vocab_size"], bias=False)

    def embed_tokens(s, tokens):
        T = tokens.shape[1]; scale = math.sqrt(s.cfg["d_model"]) if s.cfg["scale_embedding"] else 1.0
        positions = s.pos_embed.weight[:T] if hasattr(s, "pos_embed") else s.pe[:T]
        return s.embed(tokens) * scale + positions

    def forward(s, source, decoder_input):
        """Logits [B, T, vocab]; an encoder-only model reads `source` (its masked input) and ignores `decoder_input`."""
        weight = s.embed.weight if s.cfg["tied_embeddings"] else s.lm_head.weight
        if s.cfg["kind"] == "encoder-only":
            h = s.encoder(s.embed_tokens(source), key_padding=source == PAD)
            return s.mlm_head(h) @ weight.t() + s.mlm_head.bias
        memory, padding = None, None
        if s.cfg["kind"] == "encoder-decoder":
            padding = source == PAD
            memory = s.encoder(s.embed_tokens(source), key_padding=padding)
        h = s.decoder(s.embed_tokens(decoder_input), memory, padding)
        weight = s.embed.weight if s.cfg["tied_embeddings"] else s.lm_head.weight
        return h @ weight.t()



def read_safetensors(path):
    """Tensors (name -> torch.Tensor) and the string metadata of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    try:
        from safetensors.torch import load_file
        return load_file(path), metadata
    except ImportError:
        pass
    dtypes = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=np.dtype(dtypes[info["dtype"]]).newbyteorder("<"))
        tensors[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    return tensors, metadata


def load(path):
    """The model a `ddp export` file holds, in eval mode, and the file's metadata (run config, step, tokenizer)."""
    tensors, metadata = read_safetensors(path)
    config = json.loads(metadata["swiftddp_model"])
    model = Model(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if name != "pe"]  # the sinusoidal table is a buffer, not a parameter
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    return model.eval(), metadata


def batches(directory, split, kind, source_length, target_length, batch_size):
    """(source, decoder_input, labels) batches of a data split, every example once, framed as SwiftDDP frames them."""
    if kind == "encoder-only":
        raise ValueError("an encoder-only model is evaluated over ddp's masks (BERT's recipe, drawn by ddp's own random "
                         "generator), which this script does not draw: use `ddp eval`; `load` gives the model for anything else")
    import h5py
    examples = []
    for path in sorted(glob.glob(os.path.join(directory, f"{split}-*.h5"))):
        with h5py.File(path, "r") as f:
            if kind == "decoder-only":
                tokens = f["tokens"][:].tolist(); T = target_length
                for i in range((len(tokens) - 1) // T if len(tokens) > T else 0):
                    window = tokens[i * T: i * T + T + 1]
                    examples.append(([], window[:-1], window[1:]))
            else:
                st, so = f["source/tokens"][:].tolist(), f["source/offsets"][:].tolist()
                tt, to = f["target/tokens"][:].tolist(), f["target/offsets"][:].tolist()
                for i in range(len(so) - 1):
                    source, target = st[so[i]:so[i + 1]], tt[to[i]:to[i + 1]]
                    examples.append((source + [EOS], [BOS] + target, target + [EOS]))
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        S = max(len(e[0]) for e in chunk); T = max(len(e[1]) for e in chunk)
        pad = lambda rows, n: torch.tensor([row + [PAD] * (n - len(row)) for row in rows], dtype=torch.long)
        yield (pad([e[0] for e in chunk], S) if S > 0 else torch.zeros(len(chunk), 0, dtype=torch.long),
               pad([e[1] for e in chunk], T), pad([e[2] for e in chunk], T))


@torch.no_grad()
def evaluate(model, directory, split="valid", batch_size=32, source_length=None, target_length=None):
    """Loss (plain cross-entropy per real target token), perplexity and token accuracy, as `ddp eval` reports them."""
    loss, tokens, correct, sequences = 0.0, 0, 0, 0
    for source, decoder_input, labels in batches(directory, split, model.cfg["kind"], source_length, target_length, batch_size):
        logits = model(source, decoder_input).double()
        real = labels != PAD
        loss += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=PAD, reduction="sum"))
        tokens += int(real.sum()); correct += int(((logits.argmax(-1) == labels) & real).sum()); sequences += labels.shape[0]
    return {"loss": loss / tokens, "perplexity": math.exp(loss / tokens), "token_accuracy": correct / tokens,
            "tokens": tokens, "sequences": sequences}


def main():
    parser = argparse.ArgumentParser(description="Evaluate a `ddp export` file with PyTorch on a SwiftDDP data directory.")
    parser.add_argument("safetensors"); parser.add_argument("data")
    parser.add_argument("--split", default="valid"); parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, metadata = load(args.safetensors)
    run = json.loads(metadata["swiftddp_config"])
    result = evaluate(model, args.data, args.split, args.batch_size, run["data"].get("source_length", 0),
                      run["data"]["target_length"])
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
