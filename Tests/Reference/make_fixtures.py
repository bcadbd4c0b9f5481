"""PyTorch golden files for the Swift transformer (as llm.c checks its C code against PyTorch).

Builds the same models as Sources/Transformer, with the same parameter names (DESIGN.md), from fixed seeds, and
writes for each: every weight, a padded batch, the logits, the summed loss with label smoothing, every parameter
gradient of that sum, and the losses of 10 AdamW steps (gradients divided by the batch's token count, as training
does). Files are small HDF5 (well under 1 MB).

Regenerate (needs torch, h5py, numpy; run from the repository root):
    python Tests/Reference/make_fixtures.py Tests/TransformerTests/Fixtures
"""
import json, math, sys
import h5py, numpy as np, torch, torch.nn as nn, torch.nn.functional as F

PAD, BOS, EOS = 0, 1, 2
FORMAT, VERSION = "swiftddp-fixture", 1


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
        out = torch.softmax(scores, dim=-1) @ v
        return s.o_proj(out.transpose(1, 2).reshape(B, Tq, C))


class FFN(nn.Module):
    def __init__(s, c, f, activation):
        super().__init__(); s.fc1, s.fc2 = nn.Linear(c, f), nn.Linear(f, c); s.act = F.relu if activation == "relu" else F.gelu

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


class Model(nn.Module):
    def __init__(s, cfg):
        super().__init__(); s.cfg = cfg; c = cfg["d_model"]
        s.embed = nn.Embedding(cfg["vocab_size"], c)
        if cfg["positions"] == "learned": s.pos_embed = nn.Embedding(cfg["max_length"], c)
        else: s.register_buffer("pe", sinusoid(cfg["max_length"], c))
        if cfg["kind"] == "encoder-decoder":
            s.encoder = Stack(cfg, cfg["encoder_layers"], ["self_attn", "ffn"], causal=False)
            s.decoder = Stack(cfg, cfg["decoder_layers"], ["self_attn", "cross_attn", "ffn"], causal=True)
        else:
            s.decoder = Stack(cfg, cfg["decoder_layers"], ["self_attn", "ffn"], causal=True)
        if not cfg["tied_embeddings"]: s.lm_head = nn.Linear(c, cfg["vocab_size"], bias=False)

    def embed_tokens(s, tokens):
        T = tokens.shape[1]; scale = math.sqrt(s.cfg["d_model"]) if s.cfg["scale_embedding"] else 1.0
        positions = s.pos_embed.weight[:T] if hasattr(s, "pos_embed") else s.pe[:T]
        return s.embed(tokens) * scale + positions

    def forward(s, source, decoder_input):
        memory, padding = None, None
        if s.cfg["kind"] == "encoder-decoder":
            padding = source == PAD
            memory = s.encoder(s.embed_tokens(source), key_padding=padding)
        h = s.decoder(s.embed_tokens(decoder_input), memory, padding)
        weight = s.embed.weight if s.cfg["tied_embeddings"] else s.lm_head.weight
        return h @ weight.t()


def frame_seq2seq(pairs, vocab):
    S = max(len(src) for src, _ in pairs) + 1; T = max(len(tgt) for _, tgt in pairs) + 1
    source = [src + [EOS] + [PAD] * (S - len(src) - 1) for src, _ in pairs]
    dec_in = [[BOS] + tgt + [PAD] * (T - len(tgt) - 1) for _, tgt in pairs]
    labels = [tgt + [EOS] + [PAD] * (T - len(tgt) - 1) for _, tgt in pairs]
    return torch.tensor(source), torch.tensor(dec_in), torch.tensor(labels)


def write(path, cfg, source, dec_in, labels, smoothing, lr, adamw, steps=10):
    torch.manual_seed(cfg.pop("seed"))
    model = Model(cfg)
    for p in model.parameters():  # spread weights a little beyond torch's defaults so every path matters
        if p.dim() == 1: nn.init.normal_(p, mean=float(p.detach().mean()), std=0.1)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    vocab = cfg["vocab_size"]
    logits = model(source, dec_in)
    loss = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=PAD, label_smoothing=smoothing, reduction="sum")
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    tokens = int((labels != PAD).sum())

    model.zero_grad()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, **adamw)
    step_losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(source, dec_in)
        l = F.cross_entropy(out.reshape(-1, vocab), labels.reshape(-1), ignore_index=PAD, label_smoothing=smoothing, reduction="sum")
        step_losses.append(float(l))
        (l / tokens).backward(); opt.step()

    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT; f.attrs["version"] = VERSION
        f.attrs["config"] = json.dumps(cfg); f.attrs["label_smoothing"] = smoothing; f.attrs["lr"] = lr
        f.attrs["beta1"], f.attrs["beta2"] = adamw["betas"]; f.attrs["eps"] = adamw["eps"]; f.attrs["weight_decay"] = adamw["weight_decay"]
        f.attrs["torch_version"] = str(torch.__version__)
        for name, value in params.items(): f[f"params/{name}"] = value.numpy()
        for name, value in grads.items(): f[f"grads/{name}"] = value.numpy()
        f["batch/source"] = source.numpy().astype(np.int32); f["batch/decoder_input"] = dec_in.numpy().astype(np.int32)
        f["batch/labels"] = labels.numpy().astype(np.int32)
        f["expected/logits"] = logits.detach().reshape(-1, vocab).numpy()
        f["expected/loss"] = np.array([float(loss)], dtype=np.float64)
        f["expected/step_losses"] = np.array(step_losses, dtype=np.float64)
    print(f"{path}: loss {float(loss):.6f} over {tokens} tokens, step losses {step_losses[0]:.4f} -> {step_losses[-1]:.4f}")


def main(out_dir):
    g = torch.Generator().manual_seed(1234)
    rand = lambda n, v: torch.randint(4, v, (n,), generator=g).tolist()

    V = 23
    pairs = [(rand(6, V), rand(5, V)), (rand(3, V), rand(2, V)), (rand(5, V), rand(4, V))]
    source, dec_in, labels = frame_seq2seq(pairs, V)
    write(f"{out_dir}/encdec_post_sinusoidal.h5",
          dict(seed=7, kind="encoder-decoder", vocab_size=V, d_model=16, heads=4, encoder_layers=2, decoder_layers=2,
               d_ff=32, activation="relu", norm="post", positions="sinusoidal", max_length=16, dropout=0.0,
               tied_embeddings=True, scale_embedding=True),
          source, dec_in, labels, smoothing=0.1, lr=3e-3, adamw=dict(betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0))

    V = 19
    stream = rand(15, V)
    windows = [stream[0:9], stream[5:11] + [PAD] * 3]  # the second row is padded: PAD inputs and ignored labels
    x = torch.tensor(windows)
    dec_in, labels = x[:, :-1].clone(), x[:, 1:].clone()
    write(f"{out_dir}/gpt_pre_learned.h5",
          dict(seed=11, kind="decoder-only", vocab_size=V, d_model=12, heads=3, encoder_layers=0, decoder_layers=2,
               d_ff=24, activation="gelu", norm="pre", positions="learned", max_length=10, dropout=0.0,
               tied_embeddings=True, scale_embedding=False),
          torch.zeros(2, 0, dtype=torch.long), dec_in, labels, smoothing=0.1, lr=1e-2,
          adamw=dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Tests/TransformerTests/Fixtures")
