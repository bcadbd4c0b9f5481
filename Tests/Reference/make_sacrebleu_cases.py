"""Writes Tests/TrainingTests/Fixtures/sacrebleu_cases.json: BLEU and chrF as sacrebleu computes them, and the words
each BLEU tokenizer makes, for fixed corpora and for random text full of punctuation, digits, symbols and Unicode.

Run once with sacrebleu installed (`pip install sacrebleu`); the tests read the committed file and need no Python:
    python Tests/Reference/make_sacrebleu_cases.py
"""
import json
import os
import random

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

TOKENIZERS = ["13a", "none", "char", "intl"]

CORPORA = {
    "punctuation": [
        ("Hello, world! How are you?", "Hello world, how are you?"),
        ("It's a test-case (really): yes; no.", "It's a test case (really) : yes ; no ."),
        ("\"Quoted\" words [in] {braces} and <angles>", "\"Quoted\" words [in] {braces} and <angles>."),
        ("a&amp;b &lt;tag&gt; &quot;x&quot; says @user #tag", "a&b <tag> \"x\" says @user #tag"),
        ("<skipped> the rest... is silence!!", "The rest ... is silence !"),
        ("path/to/file.txt, user_name and 50% off~", "path / to / file.txt, user_name and 50 % off"),
    ],
    "numbers": [
        ("The value is 3.14 and 1,000,000 more.", "The value is 3.14 and 1,000,000 more ."),
        ("pi=3.14159. It costs $5.00, not 4-5 dollars", "pi = 3.14159 . It costs $ 5.00 , not 4 - 5 dollars"),
        ("From 2020-2021 the version v1.2.3 shipped.", "From 2020 - 2021 version v1.2.3 shipped ."),
        ("Call 555-1234 or +1 (800) 555.", "Call 555-1234 or + 1 ( 800 ) 555 ."),
        ("١٢٣٫٤ and ½ and x² and 10.5%", "١٢٣٫٤ and ½ and x² and 10.5 %"),
    ],
    "hyphens": [
        ("a well-known state-of-the-art co-operative", "a well known state of the art cooperative"),
        ("re-enter the e-mail -- then - wait -dash", "re-enter the email - then - wait - dash"),
        ("line one-\ncontinues here\nand next", "line onecontinues here and next"),
        ("12-15 items, 3 -4 and -5", "12 - 15 items , 3 - 4 and - 5"),
    ],
    "unicode": [
        ("Grüße aus Köln, schöne Grüße!", "Grüsse aus Köln, schöne Grüße!"),
        ("日本語のテキストです。これはペンです。", "日本語のテキスト。これはペンです。"),
        ("emoji 🙂 ok 👍🏽 fine — “curly” ‘quotes’ «guillemets»", "emoji 🙂 ok 👍 fine — \"curly\" 'quotes' « guillemets »"),
        ("naïve café with e\u0301 and é", "naive café with é and é"),
        ("Preis: 100€ oder £50 ± 5 → ∞", "Preis : 100 € oder £ 50 ± 5 → ∞"),
        ("Привет, мир! Как дела?", "Привет мир! Как дела?"),
        ("مرحبا، بالعالم؟ نعم.", "مرحبا بالعالم ؟ نعم ."),
    ],
    "whitespace": [
        ("  leading and trailing spaces  ", "leading and trailing spaces"),
        ("tab\tseparated\twords here", "tab separated words here"),
        ("no\u00a0break\u2009thin\u3000ideographic space", "no break thin ideographic space"),
        ("sep\x1cinfo\x1fseparators and more words", "sep info separators and more words"),
    ],
    "empty_hypotheses": [
        ("", "a reference with several words"),
        ("the cat sat on the mat", "the cat sat on the mat"),
        ("", "another one"),
        ("a dog ran in the park today", "the dog ran in the park"),
    ],
    "one_word": [
        ("olleh", "olleh"),
        ("dlrow", "dlorw"),
        ("abc", "abc"),
        ("x", "y"),
    ],
    "short_hypotheses": [
        ("the cat", "the cat sat on the mat"),
        ("it is raining", "it is raining cats and dogs outside"),
        ("hello there general kenobi", "hello there general kenobi"),
    ],
    "no_match": [
        ("x y z w v", "a b c d e"),
        ("one two three four", "five six seven eight"),
    ],
    "all_empty": [
        ("", "a b c"),
        ("", "d e"),
    ],
}

ALPHABET = (list("abcXYZ0123456789") + list(".,.,--'\"!?;:()[]{}<>/@#$%^&*_+=~`|\\") + [" ", " ", " ", "\t"]
            + list("éüß日本ー。、！？「」«»“”—–…·€£¥±×÷→∞½²٣٫") + ["🙂", "👍🏽", "e\u0301", "\u00a0", "\u3000", "&amp;",
                                                          "&lt;", "&gt;", "&quot;", "<skipped>", "-\n", "\n", "\x1e"])


def random_segment(rng):
    return [rng.choice(ALPHABET) for _ in range(rng.randint(0, 30))]


def random_pair(rng):
    """A random hypothesis and a reference that is it with a few pieces replaced, dropped or added."""
    hypothesis = random_segment(rng)
    reference = list(hypothesis)
    for _ in range(rng.randint(0, 4)):
        position = rng.randint(0, len(reference))
        edit = rng.choice(["replace", "drop", "add"])
        if edit == "add" or not reference:
            reference.insert(position, rng.choice(ALPHABET))
        elif edit == "drop":
            del reference[min(position, len(reference) - 1)]
        else:
            reference[min(position, len(reference) - 1)] = rng.choice(ALPHABET)
    return "".join(hypothesis), "".join(reference)


def main():
    rng = random.Random(20261130)
    CORPORA["random"] = [random_pair(rng) for _ in range(120)]
    cases = {"sacrebleu_version": sacrebleu.__version__, "corpora": {}, "words": {}}
    segments = []
    for name, pairs in CORPORA.items():
        hypotheses = [h for h, _ in pairs]
        references = [r for _, r in pairs]
        segments += hypotheses + references
        entry = {"hypotheses": hypotheses, "references": references, "bleu": {}, "bleu_signature": {}}
        for tokenize in TOKENIZERS:
            metric = BLEU(tokenize=tokenize)
            entry["bleu"][tokenize] = metric.corpus_score(hypotheses, [references]).score
            entry["bleu_signature"][tokenize] = str(metric.get_signature())
        chrf = CHRF()
        entry["chrf"] = chrf.corpus_score(hypotheses, [references]).score
        entry["chrf_signature"] = str(chrf.get_signature())
        cases["corpora"][name] = entry
    # The words BLEU counts: its `_preprocess_segment` (rstrip, then the tokenizer), split as extract_all_word_ngrams does.
    for tokenize in TOKENIZERS:
        metric = BLEU(tokenize=tokenize)
        cases["words"][tokenize] = [metric._preprocess_segment(s).split() for s in segments]
    cases["segments"] = segments
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "TrainingTests", "Fixtures", "sacrebleu_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}: {len(cases['corpora'])} corpora, {len(segments)} segments")


if __name__ == "__main__":
    main()
