"""PyTorch's side of `ddp bench step`: the training step of a run config's model, built from torch.nn's own modules
as a PyTorch user would build it, timed the same way.

The model comes from the config (Configs/bench-w1.yaml, Configs/bench-w2.yaml, or any run config): an encoder-decoder
is torch.nn.Transformer (post- or pre-norm, ReLU or GELU) with sinusoidal or learned positions; a decoder-only model
is a stack of torch.nn.TransformerEncoderLayer under a causal mask (nanoGPT's shape) with a final LayerNorm; an
encoder-only model is the same stack without the mask and with BERT's masked-LM head (dense, GELU, LayerNorm, the
output projection plus a bias), its loss over 15% of the positions (80% of them replaced by the mask token, 10% by a
random token, as BERT); the head runs over every position, as Hugging Face's BertForMaskedLM does, or with
--mlm-gather over the chosen positions only, as BERT's own code and ddp's training step do. All tie the output projection to the embedding when the config does. A step is what `ddp bench step` times: forward,
cross-entropy (the config's label smoothing), backward, clip_grad_norm_ (the config's clip_norm) and AdamW, on random
tokens; the median of the timed steps is reported.

With --hf-gpt2, a decoder-only config becomes transformers' GPT2LMHeadModel of that shape (Configs/bench-w4.yaml is
GPT-2 small); its own forward computes the logits, dropout off.

Usage: python Tests/Reference/bench_step_ref.py CONFIG [--threads N] [--steps S] [--warmup W] [--ddp] [--sdpa] [--hf-gpt2] [--mlm-gather]
       (with --ddp, launch under torchrun or mpirun: each rank takes its own batch and DistributedDataParallel sums
       gradients)
       (with --sdpa, a decoder-only config becomes nanoGPT's model, whose attention is scaled_dot_product_attention)
Prints one JSON object: impl, workload, threads, world, params, step_s, tokens_per_s (target tokens of all ranks),
gflops (6 per parameter per position it processes, an encoder's parameters at source positions, plus 12 x d_model x
key positions per attention layer per query position, as ddp counts), peak_rss_bytes (rank 0).
"""
import argparse, contextlib, json, math, os, resource, statistics, time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_config(path):
    """The `section: {key: value}` pairs of a SwiftDDP run config (flat YAML sections; comments dropped)."""
    sections, current = {}, None
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line.startswith(" "):
            current = sections.setdefault(line.rstrip(":").strip(), {})
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                pass
        if value in ("true", "false"):
            value = value == "true"
        current[key.strip()] = value
    return sections


def sinusoids(length, channels):
    position = torch.arange(length).unsqueeze(1)
    angle = position / (10000 ** (torch.arange(0, channels, 2) / channels))
    table = torch.zeros(length, channels)
    table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return table


class Positions(nn.Module):
    """Token embedding (scaled by sqrt(d_model) when asked) plus sinusoidal or learned positions."""

    def __init__(self, embedding, m):
        super().__init__()
        self.embedding, self.scale = embedding, math.sqrt(m["d_model"]) if m["scale"] else 1.0
        if m.get("positions", "sinusoidal") == "learned":
            self.table = nn.Parameter(torch.randn(m["max_length"], m["d_model"]) * 0.02)
        else:
            self.register_buffer("table", sinusoids(m["max_length"], m["d_model"]))

    def forward(self, tokens):
        return self.embedding(tokens) * self.scale + self.table[: tokens.shape[1]]


class EncoderDecoder(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.embedding = nn.Embedding(m["vocab_size"], m["d_model"])
        self.embed = Positions(self.embedding, m)
        self.transformer = nn.Transformer(m["d_model"], m["heads"], m["encoder_layers"], m["decoder_layers"], m["d_ff"],
                                          dropout=m.get("dropout", 0.0), activation=m.get("activation", "relu"),
                                          batch_first=True, norm_first=m.get("norm", "post") == "pre")
        self.head = nn.Linear(m["d_model"], m["vocab_size"], bias=False)
        if m.get("tied_embeddings", True):
            self.head.weight = self.embedding.weight

    def forward(self, source, decoder_input):
        mask = nn.Transformer.generate_square_subsequent_mask(decoder_input.shape[1])
        return self.head(self.transformer(self.embed(source), self.embed(decoder_input), tgt_mask=mask, tgt_is_causal=True))


class EncoderOnly(nn.Module):
    """BERT's shape: bidirectional TransformerEncoderLayers and the masked-LM head over every position (with
    --mlm-gather, over the chosen positions only)."""

    def __init__(self, m):
        super().__init__()
        c = m["d_model"]
        self.embedding = nn.Embedding(m["vocab_size"], c)
        self.embed = Positions(self.embedding, m)
        layer = nn.TransformerEncoderLayer(c, m["heads"], m["d_ff"], dropout=m.get("dropout", 0.0),
                                           activation=m.get("activation", "relu"), batch_first=True,
                                           norm_first=m.get("norm", "post") == "pre")
        self.layers = nn.TransformerEncoder(layer, m["encoder_layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c) if m.get("norm", "post") == "pre" else nn.Identity()
        self.transform = nn.Sequential(nn.Linear(c, c), nn.GELU(), nn.LayerNorm(c))
        self.head = nn.Linear(c, m["vocab_size"])
        if m.get("tied_embeddings", True):
            self.head.weight = self.embedding.weight

    def forward(self, source, decoder_input, chosen=None):
        hidden = self.norm(self.layers(self.embed(source)))
        # --mlm-gather: the head over the chosen positions only (BERT's gather_indexes), as ddp trains.
        return self.head(self.transform(hidden if chosen is None else hidden[chosen]))


class DecoderOnly(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.embedding = nn.Embedding(m["vocab_size"], m["d_model"])
        self.embed = Positions(self.embedding, m)
        layer = nn.TransformerEncoderLayer(m["d_model"], m["heads"], m["d_ff"], dropout=m.get("dropout", 0.0),
                                           activation=m.get("activation", "relu"), batch_first=True,
                                           norm_first=m.get("norm", "post") == "pre")
        self.layers = nn.TransformerEncoder(layer, m["decoder_layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(m["d_model"]) if m.get("norm", "post") == "pre" else nn.Identity()
        self.head = nn.Linear(m["d_model"], m["vocab_size"], bias=False)
        if m.get("tied_embeddings", True):
            self.head.weight = self.embedding.weight

    def forward(self, source, decoder_input):
        mask = nn.Transformer.generate_square_subsequent_mask(decoder_input.shape[1])
        return self.head(self.norm(self.layers(self.embed(decoder_input), mask=mask, is_causal=True)))


class NanoGPTBlock(nn.Module):
    """nanoGPT's block: pre-norm, a fused q/k/v projection and F.scaled_dot_product_attention(is_causal=True), which on
    CPU runs PyTorch's flash-attention kernel (tiles, no stored probabilities)."""

    def __init__(self, m):
        super().__init__()
        c = m["d_model"]
        self.heads = m["heads"]
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.mlp = nn.Sequential(nn.Linear(c, m["d_ff"]), nn.GELU() if m.get("activation", "relu") == "gelu" else nn.ReLU(),
                                 nn.Linear(m["d_ff"], c))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.c_proj(y)
        return x + self.mlp(self.ln_2(x))


class HuggingFaceGPT2(nn.Module):
    """A decoder-only config as transformers' GPT2LMHeadModel (--hf-gpt2): GELU tanh, no dropout, transformers' default
    attention implementation (scaled_dot_product_attention in recent versions)."""

    def __init__(self, m):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(vocab_size=m["vocab_size"], n_positions=m["max_length"], n_embd=m["d_model"], n_layer=m["decoder_layers"],
                            n_head=m["heads"], n_inner=m["d_ff"], activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, tie_word_embeddings=m.get("tied_embeddings", True))
        self.model = GPT2LMHeadModel(config)

    def forward(self, source, decoder_input):
        return self.model(decoder_input).logits


class NanoGPT(nn.Module):
    """A decoder-only config as nanoGPT writes it (--sdpa): token and learned position embeddings, NanoGPTBlocks, a
    final LayerNorm and the tied head."""

    def __init__(self, m):
        super().__init__()
        self.embedding = nn.Embedding(m["vocab_size"], m["d_model"])
        self.embed = Positions(self.embedding, m)
        self.blocks = nn.ModuleList(NanoGPTBlock(m) for _ in range(m["decoder_layers"]))
        self.norm = nn.LayerNorm(m["d_model"])
        self.head = nn.Linear(m["d_model"], m["vocab_size"], bias=False)
        if m.get("tied_embeddings", True):
            self.head.weight = self.embedding.weight

    def forward(self, source, decoder_input):
        x = self.embed(decoder_input)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--sdpa", action="store_true", help="decoder-only configs: nanoGPT's model (scaled_dot_product_attention)")
    parser.add_argument("--hf-gpt2", action="store_true", help="decoder-only configs: transformers' GPT2LMHeadModel")
    parser.add_argument("--mlm-gather", action="store_true",
                        help="encoder-only configs: the masked-LM head over the chosen positions only (BERT's gather_indexes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = read_config(args.config)
    m, data, training = config["model"], config.get("data", {}), config["training"]
    kind = m.get("kind", "encoder-decoder")
    encoder_decoder = kind == "encoder-decoder"
    m["scale"] = m.get("scale_embedding", encoder_decoder)
    rank, world = 0, 1
    if args.ddp:
        # torchrun sets RANK and WORLD_SIZE; under Open MPI's mpirun they come from its own variables.
        rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0)))
        world = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1)))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    if args.sdpa and kind != "decoder-only":
        parser.error(f"--sdpa builds nanoGPT's decoder-only model; {args.config} is {kind}")
    if args.mlm_gather and kind != "encoder-only":
        parser.error(f"--mlm-gather is for encoder-only models; {args.config} is {kind}")
    if args.hf_gpt2 and kind != "decoder-only":
        parser.error(f"--hf-gpt2 builds a decoder-only GPT-2; {args.config} is {kind}")
    model = HuggingFaceGPT2(m) if args.hf_gpt2 else NanoGPT(m) if args.sdpa else {"encoder-decoder": EncoderDecoder, "decoder-only": DecoderOnly, "encoder-only": EncoderOnly}[kind](m)
    parameters = sum(p.numel() for p in model.parameters())  # tied weights counted once
    b, t = training["batch_size"], data["target_length"]
    s = data.get("source_length", 0) if encoder_decoder else 0
    source = torch.randint(4, m["vocab_size"], (b, s))
    decoder_input, labels = torch.randint(4, m["vocab_size"], (b, t)), torch.randint(4, m["vocab_size"], (b, t))
    if kind == "encoder-only":
        # BERT's recipe on a random window: the loss over the chosen positions only (ignore_index 0, PAD).
        mlm = config.get("mlm", {})
        probability, masked = float(mlm.get("probability", 0.15)), float(mlm.get("mask_replace_prob", 0.8))
        replaced = masked + float(mlm.get("random_replace_prob", 0.1))
        mask_id, window = m["vocab_size"] - 1, torch.randint(4, m["vocab_size"] - 1, (b, t))
        chosen = torch.rand(b, t) < probability
        draw = torch.rand(b, t)
        source = torch.where(chosen & (draw < masked), torch.full_like(window, mask_id), window)
        source = torch.where(chosen & (draw >= masked) & (draw < replaced), torch.randint(4, mask_id, (b, t)), source)
        labels = torch.where(chosen, window, torch.zeros_like(window))
    if args.ddp:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.get("optimizer", {}).get("lr", 1e-4)))
    smoothing, clip = float(training.get("label_smoothing", 0.0)), float(training.get("clip_norm", 1.0))
    accumulation = int(training.get("grad_accum", 1))
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        # training.grad_accum micro-batches, as ddp's step takes them; DDP all-reduces only in the last backward.
        for micro in range(accumulation):
            last = micro == accumulation - 1
            with model.no_sync() if args.ddp and not last else contextlib.nullcontext():
                if args.mlm_gather:
                    logits = model(source, decoder_input, chosen)
                    loss = F.cross_entropy(logits, labels[chosen], label_smoothing=smoothing)
                else:
                    logits = model(source, decoder_input)
                    loss = F.cross_entropy(logits.reshape(-1, m["vocab_size"]), labels.reshape(-1), label_smoothing=smoothing,
                                           ignore_index=0 if kind == "encoder-only" else -100)
                loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = world * accumulation * b * t
    # As ddp counts (BenchStep.modelFLOPs): 6 per parameter per position it processes, the encoder's at source positions,
    # plus 12 x d_model x key positions per attention layer per query position.
    c = m["d_model"]
    if encoder_decoder:
        encoder = sum(p.numel() for p in model.transformer.encoder.parameters())
        per_pair = ((6 * encoder + 12 * m["encoder_layers"] * s * c) * s
                    + (6 * (parameters - encoder) + 12 * m["decoder_layers"] * (t + s) * c) * t)
    else:
        layers = m.get("encoder_layers", 0) if kind == "encoder-only" else m.get("decoder_layers", 0)
        per_pair = (6 * parameters + 12 * layers * t * c) * t
    flops = per_pair * world * accumulation * b
    if rank == 0:
        impl = "transformers-gpt2" if args.hf_gpt2 else "pytorch-" + torch.__version__
        print(json.dumps({"impl": impl, "workload": os.path.basename(args.config), "threads": args.threads,
                          "world": world, "params": parameters, "step_s": round(seconds, 4),
                          "tokens_per_s": round(tokens / seconds, 1), "gflops": round(flops / seconds / 1e9, 1),
                          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    if args.ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
