"""Hugging Face references for SwiftDDP's GPT-2 import/export and byte-level BPE tokenizer tests.

Needs torch, transformers and tokenizers (the tokenizer subcommands need only tokenizers). Nothing is downloaded:
the model is random and the tokenizer is trained here on local text.

  python hf_gpt2.py corpus OUT.txt [--megabytes N]     mixed text: accents, CJK, emoji, code, whitespace runs
  python hf_gpt2.py tokenizer TEXT OUT.json --vocab N   a ByteLevelBPETokenizer trained on TEXT (<|endoftext|> added),
                                                        plus added tokens "<sep>" (not normalized) and "x<sep" and "Ġfoo"
  python hf_gpt2.py encode TOKENIZER.json TEXT OUT.json the ids `tokenizers` gives TEXT (whole, and line by line), and
                                                        a text with added tokens in it, with its decoding
  python hf_gpt2.py model TOKENIZER.json DIR            a random GPT2LMHeadModel directory with that tokenizer
  python hf_gpt2.py logits DIR TOKENS.json OUT.json     logits [B,T,V] and the mean next-token loss of a batch
"""
import json
import random
import sys


def corpus(path, megabytes=1.1):
    rng = random.Random(1234)
    words = ["the", "model", "don't", "it's", "we'll", "THEY'RE", "I'm", "you've", "she'd", "data", "parallel", "gradient",
             "café", "naïve", "Ærøskøbing", "straße", "Größe", "señor", "résumé", "e\u0301", "Ελληνικά", "русский", "язык",
             "中文字符", "日本語のテキスト", "한국어", "العربية", "עברית", "हिन्दी", "ไทย", "😀", "🎉🎉", "👍🏽", "👨‍👩‍👧",
             "12345", "3.14159", "½", "x²", "Ⅻ", "٣٤", "...", "!!!", "—", "«quoted»", "“smart”", "'single'", "$100", "#tag",
             "@user", "a_b", "CamelCase", "snake_case", "\u00a0nbsp", "ideo\u3000space", "tab\tbed", "zero\u200bwidth"]
    code = ["def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
            "{ \"key\": [1, 2, 3], \"nested\": {\"a\": null} }\n", "    if x:\n        pass\n\n\n", "SELECT * FROM t WHERE a <> 'b';\n",
            "let y = x.map { $0 * 2 }  // swift\n", "<div class=\"x\">&amp;</div>\n"]
    spaces = [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n", "    ", "\n\n\n    "]
    parts, size = [], 0
    while size < megabytes * 1_000_000:
        if rng.random() < 0.05:
            piece = rng.choice(code)
        else:
            piece = rng.choice(words) + rng.choice(spaces)
        parts.append(piece)
        size += len(piece.encode())
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(parts))


ADDED_TEXT = "one<|endoftext|>two x<sep> three<sep>four x<sepx Ġfoo naïve <|endoftext|><|endoftext|>end\n"


def train_tokenizer(text_path, out, vocab, added=True):
    from tokenizers import ByteLevelBPETokenizer
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train([text_path], vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    if added:
        from tokenizers import AddedToken
        # Overlapping contents: tokenizers cuts out the tokens that are not normalized first ("<sep>" in "x<sep>").
        tokenizer.add_tokens([AddedToken("<sep>", normalized=False), AddedToken("x<sep", normalized=True), AddedToken("Ġfoo")])
    tokenizer.save(out)


def encode(tokenizer_path, text_path, out):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(tokenizer_path)
    with open(text_path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")[:2000]
    marked = text[:20000] + ADDED_TEXT + text[20000:40000]
    result = {"whole": tokenizer.encode(text).ids, "lines": [tokenizer.encode(line).ids for line in lines],
              "decoded_whole": tokenizer.decode(tokenizer.encode(text).ids) == text,
              "marked_text": marked, "marked": tokenizer.encode(marked).ids, "marked_decoded": tokenizer.decode(tokenizer.encode(marked).ids)}
    with open(out, "w") as f:
        json.dump(result, f)


def model(tokenizer_path, directory):
    import shutil
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from tokenizers import Tokenizer
    torch.manual_seed(0)
    tokenizer = Tokenizer.from_file(tokenizer_path)
    eos = tokenizer.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos)
    net = GPT2LMHeadModel(config)
    with torch.no_grad():  # LayerNorms and biases away from their initial 1 and 0, so a swapped tensor shows
        for name, p in net.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    net.save_pretrained(directory)
    shutil.copy(tokenizer_path, f"{directory}/tokenizer.json")


def logits(directory, tokens_path, out):
    import torch
    from transformers import GPT2LMHeadModel
    net = GPT2LMHeadModel.from_pretrained(directory).eval()
    with open(tokens_path) as f:
        batch = torch.tensor(json.load(f), dtype=torch.long)
    with torch.no_grad():
        output = net(batch, labels=batch)
    with open(out, "w") as f:
        json.dump({"logits": output.logits.flatten().tolist(), "loss": output.loss.item()}, f)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "corpus":
        corpus(args[0], float(args[2]) if len(args) > 2 else 1.1)
    elif command == "tokenizer":
        train_tokenizer(args[0], args[1], int(args[3]))
    elif command == "encode":
        encode(*args)
    elif command == "model":
        model(*args)
    elif command == "logits":
        logits(*args)
    else:
        sys.exit(f"unknown command {command}")
