"""PyTorch golden files for the Swift transformer (as llm.c checks its C code against PyTorch).

Builds the same models as Sources/Transformer, with the same parameter names (README.md, "The model"), from fixed seeds, and
writes for each: every weight, a padded batch, the logits, every attention's per-head weights [B, H, Tq, Tk] (by the
attention's parameter prefix, as `expected/attention/decoder.layers.0.self_attn`), the summed loss with label
smoothing, every parameter gradient of that sum, and the losses of 10 AdamW steps (gradients divided by the batch's token count, as training
does). Files are small HDF5 (well under 1 MB).

Regenerate (needs torch, h5py, numpy; run from the repository root):
    python Tests/Reference/make_fixtures.py Tests/TransformerTests/Fixtures
"""
import json, sys
import h5py, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from swiftddp_torch import BOS, EOS, PAD, Model  # the same modules `ddp export` files load into

FORMAT, VERSION = "swiftddp-fixture", 1


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
    for module in model.modules(): module.keep_weights = True  # every attention keeps its softmax weights
    vocab = cfg["vocab_size"]
    logits = model(source, dec_in)
    # Every attention's per-head weights of this forward, by the attention's parameter prefix.
    attention = {name: module.weights.clone() for name, module in model.named_modules() if hasattr(module, "weights")}
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
        for name, value in attention.items(): f[f"expected/attention/{name}"] = value.numpy()
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


    V = 21
    MASK = V - 1  # the tokenizer's first id past its vocabulary; any id works for the fixture
    rows = [rand(9, V), rand(6, V) + [PAD] * 3]  # the second row is padded: masked keys, ignored labels
    chosen = [[1, 4, 7], [0, 3]]
    source, labels = [list(row) for row in rows], [[PAD] * 9 for _ in rows]
    for r, positions in enumerate(chosen):
        for i, p in enumerate(positions):
            labels[r][p] = rows[r][p]
            source[r][p] = MASK if i % 3 != 2 else rand(1, V - 1)[0]  # mostly the mask, once a random token
    write(f"{out_dir}/bert_post_learned.h5",
          dict(seed=13, kind="encoder-only", vocab_size=V, d_model=12, heads=3, encoder_layers=2, decoder_layers=0,
               d_ff=24, activation="gelu", norm="post", positions="learned", max_length=10, dropout=0.0,
               tied_embeddings=True, scale_embedding=False),
          torch.tensor(source), torch.zeros(2, 0, dtype=torch.long), torch.tensor(labels), smoothing=0.0, lr=1e-2,
          adamw=dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Tests/TransformerTests/Fixtures")
