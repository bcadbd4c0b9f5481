"""Crafted and damaged inputs for SwiftDDP: files a user did not write and should not trust.

    python Tests/CraftedFiles/make_crafted_files.py SHARD_SEQ2SEQ SHARD_LM CHECKPOINT OUTPUT_DIR

Starting from real files that `ddp prepare` and `ddp train` wrote, writes one variant per kind of attack into
OUTPUT_DIR (`shard-*.h5`, `lm-*.h5`, `checkpoint-*.h5`, `config-*.yaml`) and prints one JSON line per variant:
{"file": NAME, "kind": "shard" | "lm" | "checkpoint" | "config", "what": DESCRIPTION, "usable": "yes" | "no"} ("yes":
the data is sound and only something around it is odd, so commands may accept it). Needs h5py and numpy.
Tests/ddpTests/HostileFilesTests.swift runs every command on every variant under a memory cap and a time limit.
"""
import json, os, shutil, sys

import h5py
import numpy as np

seq2seq_shard, lm_shard, checkpoint, out = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
made = []


def variant(source, name, kind, what, change, usable=False, libver=None):
    """usable: the data is still sound (only something around it is odd), so commands may accept it. libver: h5py's
    (the file format versions it may write)."""
    path = os.path.join(out, name)
    shutil.copyfile(source, path)
    with h5py.File(path, "a", libver=libver) as f:
        if "attribute_digest" in f.attrs:
            del f.attrs["attribute_digest"]  # a crafted file would not carry a digest that matches
        change(f)
    made.append({"file": name, "kind": kind, "what": what, "usable": "yes" if usable else "no"})


def replace(f, name, **create):
    del f[name]
    return f.create_dataset(name, **create)


# Sizes taken from the file and allocated without bounds.
def huge_sparse_tokens(f):
    d = replace(f, "tokens", shape=(2**31,), chunks=(4096,), dtype="i4")
    d[:8] = 5  # one chunk stored out of 524,288


variant(lm_shard, "lm-huge-sparse-tokens.h5", "lm", "2^31 declared tokens, one chunk stored", huge_sparse_tokens)
variant(lm_shard, "lm-1e8-sparse-tokens.h5", "lm", "10^8 declared tokens, one chunk stored",
        lambda f: replace(f, "tokens", shape=(10**8,), chunks=(4096,), dtype="i4").__setitem__(slice(0, 8), 5))
variant(lm_shard, "lm-unwritten-contiguous.h5", "lm", "a contiguous dataset declared and never written",
        lambda f: replace(f, "tokens", shape=(10**8,), dtype="i4"))
variant(lm_shard, "lm-overflowing-shape.h5", "lm", "a 2-D shape whose element count overflows",
        lambda f: replace(f, "tokens", shape=(2**40, 2**40), maxshape=(None, None), chunks=(1, 1), dtype="i4"))
variant(seq2seq_shard, "shard-sparse-offsets.h5", "shard", "offsets declaring 2^31 pairs, almost none stored",
        lambda f: replace(f, "source/offsets", shape=(2**31,), chunks=(1024,), dtype="i8").__setitem__(slice(0, 4), [0, 1, 2, 3]))


def bpe_bomb(f):
    merges = [[4, 4]] + [[260 + i, 260 + i] for i in range(39)]
    f.attrs["tokenizer"] = json.dumps({"kind": "bpe", "vocab_size": 300, "merges": merges})
    f.attrs["vocab_size"] = 300


variant(seq2seq_shard, "shard-bpe-bomb.h5", "shard", "40 BPE merges that each double the previous token", bpe_bomb)

# Empty attributes (a null dataspace).
for name in ["format", "version", "tokenizer", "vocab_size", "task"]:
    empty = h5py.Empty("S1") if name in ("format", "tokenizer", "task") else h5py.Empty("i8")
    variant(seq2seq_shard, f"shard-empty-{name}.h5", "shard", f"attribute {name} with a null dataspace",
            lambda f, name=name, empty=empty: f.attrs.create(name, empty))
for name in ["step", "config", "version"]:
    empty = h5py.Empty("S1") if name == "config" else h5py.Empty("i8")
    variant(checkpoint, f"checkpoint-empty-{name}.h5", "checkpoint", f"attribute {name} with a null dataspace",
            lambda f, name=name, empty=empty: f.attrs.create(name, empty))

# Links.
variant(seq2seq_shard, "shard-link-cycle.h5", "shard", "a group holding a hard link to the root",
        lambda f: f.create_group("loop").__setitem__("root", f["/"]), usable=True)
variant(checkpoint, "checkpoint-link-cycle.h5", "checkpoint", "a group holding a hard link to the root",
        lambda f: f["optimizer"].__setitem__("up", f["/"]), usable=True)
elsewhere = os.path.join(out, "elsewhere.h5")
with h5py.File(elsewhere, "w") as f:
    f["tokens"] = np.full(4096, 5, dtype=np.int32)
    f["weight"] = np.zeros((260, 16), dtype=np.float32)


def external_tokens(f):
    del f["tokens"]
    f["tokens"] = h5py.ExternalLink("elsewhere.h5", "/tokens")


variant(lm_shard, "lm-external-link.h5", "lm", "/tokens an external link to another file", external_tokens)


def external_tensor(f):
    name = "params/embed.weight"
    shape = f[name].shape
    del f[name]
    with h5py.File(elsewhere, "a") as other:
        if "embed" not in other:
            other["embed"] = np.zeros(shape, dtype=np.float32)
    f[name] = h5py.ExternalLink("elsewhere.h5", "/embed")


variant(checkpoint, "checkpoint-external-link.h5", "checkpoint", "a tensor that is an external link", external_tensor)

# Values that trap instead of failing.
variant(checkpoint, "checkpoint-negative-step.h5", "checkpoint", "step -5", lambda f: f.attrs.__setitem__("step", np.int64(-5)))
variant(checkpoint, "checkpoint-huge-epoch.h5", "checkpoint", "epoch 2^62", lambda f: f.attrs.__setitem__("epoch", np.int64(2**62)))
variant(checkpoint, "checkpoint-negative-optimizer-step.h5", "checkpoint", "optimizer_step -1",
        lambda f: f.attrs.__setitem__("optimizer_step", np.int64(-1)))


def config_change(**model):
    def change(f):
        config = json.loads(f.attrs["config"])
        config["model"].update(model)
        f.attrs["config"] = json.dumps(config)
    return change


variant(checkpoint, "checkpoint-d-model-1e7.h5", "checkpoint", "config d_model 10^7, tiny tensors", config_change(d_model=10**7))
variant(checkpoint, "checkpoint-d-model-2e40.h5", "checkpoint", "config d_model 2^40", config_change(d_model=2**40))
variant(checkpoint, "checkpoint-vocab-at-limit.h5", "checkpoint", "config at the limits, tiny tensors",
        config_change(vocab_size=2**24, d_model=2**16, heads=1))
variant(checkpoint, "checkpoint-negative-heads.h5", "checkpoint", "config heads -4", config_change(heads=-4))
variant(checkpoint, "checkpoint-config-not-json.h5", "checkpoint", "config that is not JSON",
        lambda f: f.attrs.__setitem__("config", "{not json"))


def unstored_tensor(f):
    name = "params/embed.weight"
    shape = f[name].shape
    replace(f, name, shape=shape, chunks=(1, shape[1]), dtype="f4", fletcher32=True)


variant(checkpoint, "checkpoint-unstored-tensor.h5", "checkpoint", "a tensor declared and never written", unstored_tensor)


def nan_parameter(f):
    data = f["params/embed.weight"][...]
    data[3, 2] = np.nan
    data[7, 0] = np.inf
    replace(f, "params/embed.weight", data=data, chunks=data.shape, fletcher32=True)


variant(checkpoint, "checkpoint-nan-parameter.h5", "checkpoint", "NaN and infinity in embed.weight", nan_parameter)
variant(checkpoint, "checkpoint-tensor-wrong-type.h5", "checkpoint", "a tensor stored as int32",
        lambda f: replace(f, "params/embed.weight", data=np.zeros(f["params/embed.weight"].shape, dtype=np.int32)))
variant(checkpoint, "checkpoint-bpe-bomb.h5", "checkpoint", "40 BPE merges that each double the previous token",
        lambda f: f.attrs.__setitem__("tokenizer", json.dumps(
            {"kind": "bpe", "vocab_size": 300, "merges": [[4, 4]] + [[260 + i, 260 + i] for i in range(39)]})))

# One chunk far larger than any reader caches: every read would decompress it again (80 MB of deflate in 80 KB).
def huge_deflate_chunk(f):
    n = 20_000_000
    d = replace(f, "tokens", shape=(n,), chunks=(n,), dtype="i4", compression="gzip", compression_opts=9)
    d[...] = np.full(n, 5, np.int32)
variant(lm_shard, "lm-huge-deflate-chunk.h5", "lm", "one 80 MB deflate chunk", huge_deflate_chunk)
# Fewer samples than one batch (9 tokens: one window of 8): refused by name, never a trap.
variant(lm_shard, "lm-fewer-samples-than-a-batch.h5", "lm", "one sample, batches of 4",
        lambda f: replace(f, "tokens", data=f["tokens"][:9]), usable=True)
# A sampler position past the end of an epoch: resuming refuses it (the parameters are sound, so the rest may read it).
variant(checkpoint, "checkpoint-batch-past-epoch.h5", "checkpoint", "sampler batch 10^6 of an epoch",
        lambda f: f.attrs.__setitem__("batch", np.int64(10**6)), usable=True)

# Data compressed with a filter this HDF5 cannot decode (h5py's lzf): named as such, not reported as damage.
variant(lm_shard, "lm-lzf-tokens.h5", "lm", "tokens compressed with h5py's lzf filter",
        lambda f: replace(f, "tokens", data=f["tokens"][...], compression="lzf", chunks=(1024,)))
variant(checkpoint, "checkpoint-lzf-tensor.h5", "checkpoint", "a tensor compressed with h5py's lzf filter",
        lambda f: replace(f, "params/embed.weight", data=f["params/embed.weight"][...], compression="lzf",
                          chunks=f["params/embed.weight"].shape))

# Members of /params the model has no parameter for (strict loading, as torch's load_state_dict): a layer of a deeper
# model pasted in; a member written in a format newer than the reader's HDF5 (a compound type with libver "latest",
# whose datatype message HDF5 1.10 cannot decode).
variant(checkpoint, "checkpoint-extra-tensor.h5", "checkpoint", "a tensor of a layer the model does not have",
        lambda f: f.create_dataset("params/encoder.layers.9.ffn.fc1.weight", data=np.zeros((2, 2), dtype=np.float32)))
variant(checkpoint, "checkpoint-newer-format-member.h5", "checkpoint", "a member of /params only a newer HDF5 may read",
        lambda f: f.create_dataset("params/notes", data=np.zeros(3, dtype=[("a", "i4"), ("b", "f4")])), libver="latest")
# The data itself written so (chunked, gzip): named as a dataset this HDF5 cannot open, not as missing.
variant(lm_shard, "lm-newer-format-tokens.h5", "lm", "tokens written in a newer HDF5 format (libver latest)",
        lambda f: replace(f, "tokens", data=f["tokens"][...], chunks=(1024,), compression="gzip"), libver="latest")
# The same beside a shard's data: the data reads (usable), and `ddp inspect`, which lists every member, says it cannot.
variant(lm_shard, "lm-newer-format-member.h5", "lm", "a member only a newer HDF5 may read, beside sound data",
        lambda f: f.create_dataset("notes", data=np.zeros(3, dtype=[("a", "i4"), ("b", "f4")])), libver="latest", usable=True)

# Configs (YAML) with values that cannot work.
configs = {
    "config-d-model-1e40.yaml": ("d_model 1e40", "d_model: 1.0e+40"),
    "config-d-model-huge.yaml": ("d_model 2^40", "d_model: 1099511627776"),
    "config-batch-huge.yaml": ("batch_size 2^40", None),
    "config-timeout-inf.yaml": ("collective_timeout .inf", None),
    "config-lr-nan.yaml": ("lr .nan", None),
}
base = """model: {kind: encoder-decoder, vocab_size: 260, D_MODEL, heads: 4, encoder_layers: 1, decoder_layers: 1, d_ff: 64,
        activation: relu, norm: pre, positions: sinusoidal, max_length: 16, dropout: 0.0, tied_embeddings: true}
data: {directory: DATA, source_length: 9, target_length: 9}
training: {batch_size: BATCH, steps: 2, threads: 1, collective_timeout: TIMEOUT}
optimizer: {lr: LR}
"""
for name, (what, d_model) in configs.items():
    text = base.replace("D_MODEL", d_model or "d_model: 32").replace("DATA", os.path.dirname(os.path.abspath(seq2seq_shard)))
    text = text.replace("BATCH", "1099511627776" if "batch" in name else "4")
    text = text.replace("TIMEOUT", ".inf" if "timeout" in name else "30").replace("LR", ".nan" if "nan" in name else "0.001")
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
    made.append({"file": name, "kind": "config", "what": what, "usable": "no"})

# YAML whose keys are aliases of aliases (expanded exponentially), or lists instead of names.
alias_bomb = "x: &m0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"? &m{i} [" + ",".join([f"*m{i - 1}"] * 10) + "]\n: 1\n" for i in range(1, 9))
complex_key = base.replace("D_MODEL", "d_model: 32").replace("DATA", "data").replace("BATCH", "4").replace("TIMEOUT", "30")
complex_key = complex_key.replace("LR", "0.001").replace("heads: 4", "heads: 4, ? [a, b] : 32")
for name, what, text in [("config-alias-key-bomb.yaml", "keys that are aliases of aliases, 10^8 when expanded", alias_bomb),
                         ("config-list-key.yaml", "a key that is a list", complex_key)]:
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
    made.append({"file": name, "kind": "config", "what": what, "usable": "no"})

for item in made:
    print(json.dumps(item))
