#!/usr/bin/env bash
# Token-budget batching (training.max_tokens) against fixed-count batching (training.batch_size 16 per rank) on a real
# variable-length parallel corpus, the same model (Configs/bench-mt.yaml), RANKS ranks x 1 thread, alternating the two
# in one session. Each run trains EPOCHS whole epochs; prints every run (real target tokens/s, the share of computed
# positions that were padding, the final validation loss), then the medians and the speed ratio.
#   Launch/bench-batching.sh [--rounds R] [--epochs E] [--max-tokens M] [--length-groups K] [--ranks N] [--pairs P] [--source FILE --target FILE]
# With --length-groups K the token-budget runs join K length groups per batch (training.length_groups) and take
# grad_accum K / N rounded up, at least one micro-batch per group.
# The corpus: by default English-German pairs of the user-interface strings of the programs installed here (the
# German gettext catalogs under /usr/share/locale/de/LC_MESSAGES, read with python3's gettext), the first P of them
# in a seeded order; or your own line-aligned --source/--target files.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rounds=3 epochs=2 max_tokens=1200 groups=1 ranks=2 pairs=6000 source="" target=""
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --length-groups) groups="$2"; shift 2 ;;
    --ranks) ranks="$2"; shift 2 ;;
    --pairs) pairs="$2"; shift 2 ;;
    --source) source="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    *) echo "bench-batching.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$groups" =~ ^[1-9][0-9]*$ && "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "bench-batching.sh: --length-groups and --ranks take positive numbers" >&2; exit 2; }
# The token-budget runs' settings: the budget, and with length groups one micro-batch per group.
accumulation=$(( (groups + ranks - 1) / ranks ))
budget_settings=(--set training.max_tokens="$max_tokens")
(( groups == 1 )) || budget_settings+=(--set training.length_groups="$groups" --set training.grad_accum="$accumulation")
[ -x "$root/.build/release/ddp" ] || "$root/Launch/setup.sh"
ddp="$root/.build/release/ddp"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$source" ]; then
  python3 - "$work" "$pairs" <<'PY'
import gettext, glob, random, sys
work, count = sys.argv[1], int(sys.argv[2])
pairs = {}
for path in sorted(glob.glob("/usr/share/locale/de/LC_MESSAGES/*.mo")):
    try:
        catalog = gettext.GNUTranslations(open(path, "rb"))._catalog
    except Exception:
        continue
    for english, german in catalog.items():
        if isinstance(english, str) and english and german and not any(c in english + german for c in "\n\r\t"):
            if len(english) <= 300 and len(german) <= 300:
                pairs[english] = german
if len(pairs) < 1000:
    sys.exit(f"bench-batching.sh: only {len(pairs)} English-German pairs in /usr/share/locale/de/LC_MESSAGES; give --source and --target")
items = sorted(pairs.items())
random.Random(2).shuffle(items)
items = items[:count]
with open(f"{work}/en.txt", "w") as en, open(f"{work}/de.txt", "w") as de:
    for english, german in items:
        en.write(english + "\n")
        de.write(german + "\n")
print(f"corpus: {len(items)} English-German pairs from the gettext catalogs in /usr/share/locale/de/LC_MESSAGES")
PY
  source="$work/en.txt" target="$work/de.txt"
fi
"$ddp" prepare --source "$source" --target "$target" --tokenizer bpe --vocab-size 2000 --max-length 96 --valid-fraction 0.05 \
  --seed 1 --output "$work/data" | sed 's/^/prepare: /'
"$ddp" bench data --data "$work/data" --config "$root/Configs/bench-mt.yaml" --set training.max_tokens="$max_tokens" --set training.length_groups="$groups" --batches 20 \
  | grep padding | sed 's/^/bench data (1 rank): /'

# Updates per epoch of each batching, from the trainer's own start-up line (a 1-step run).
updates_per_epoch() {
  "$root/Launch/mpirun.sh" -np "$ranks" train --config "$root/Configs/bench-mt.yaml" --run-dir "$work/probe" --overwrite \
    --set data.directory="$work/data" --set training.steps=1 "$@" | grep -o '[0-9]* updates per epoch' | grep -o '^[0-9]*'
}
fixed_epoch=$(updates_per_epoch)
budget_epoch=$(updates_per_epoch "${budget_settings[@]}")
echo "updates per epoch on $ranks ranks: fixed $fixed_epoch, max_tokens $max_tokens ($groups length group(s), grad_accum $accumulation): $budget_epoch"

results="$work/results"
for round in $(seq "$rounds"); do
  for way in fixed budget; do
    if [ "$way" = fixed ]; then extra=(--set training.steps=$((epochs * fixed_epoch)))
    else extra=("${budget_settings[@]}" --set training.steps=$((epochs * budget_epoch))); fi
    output=$("$root/Launch/mpirun.sh" -np "$ranks" train --config "$root/Configs/bench-mt.yaml" --run-dir "$work/run-$way" --overwrite \
      --set data.directory="$work/data" "${extra[@]}")
    progress=$(grep '^step ' <<<"$output" | tail -1)
    rate=$(grep -o '[0-9]* tokens/s' <<<"$progress" | grep -o '^[0-9]*')
    padding=$(grep -o 'padding [0-9.]*%' <<<"$progress" | grep -o '[0-9.]*')
    loss=$(grep -o 'final validation: loss [0-9.]*' <<<"$output" | grep -o '[0-9.]*$')
    echo "$way $rate $padding $loss" | tee -a "$results"
  done
done
python3 - "$results" "$epochs" "$ranks" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    way, rate, padding, loss = line.split()
    runs[way].append((float(rate), float(padding), float(loss)))
median = lambda way, i: statistics.median(r[i] for r in runs[way])
for way in ("fixed", "budget"):
    print(f"{way}: {median(way, 0):.0f} real target tokens/s, padding {median(way, 1):.1f}% of computed positions, "
          f"validation loss {median(way, 2):.4f} after {sys.argv[2]} epochs (medians of {len(runs[way])} runs, {sys.argv[3]} ranks)")
print(f"speed ratio budget / fixed: {median('budget', 0) / median('fixed', 0):.2f}")
PY
