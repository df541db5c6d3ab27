"""Data for test_recipe.sh: a small world of animals, verbs, adjectives and
places, written three ways.

 - style.jsonl: "Tell me about the A and the B." answered in one prose
   style ("The A verbs the B. The B is ADJ. They live near the PLACE."),
   the corpus full_sft pre-trains on;
 - notes.jsonl: "Write a note about the A and the B." answered in a new
   template (Summary / Key Points with exactly two bullets / Question
   ending in "?", nothing after it), what the SFT job teaches;
 - pairs.jsonl: the same prompts with a compliant note chosen and a near
   miss rejected (a third bullet, or a line after the question), for DPO;
 - *_eval.jsonl: held-out animal pairs never seen in training.
Facts are drawn at random per row, so the answers cannot be memorised:
only the style and the template are learnable. Usage: recipe_data.py DIR"""
import json
import random
import sys

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "hen", "elk", "rat", "bat"]
VERBS = [("sees", "see"), ("likes", "like"), ("follows", "follow"), ("finds", "find"), ("helps", "help"),
         ("warns", "warn")]
ADJS = ["small", "quiet", "happy", "old", "brave", "tired", "clever", "young"]
PLACES = ["river", "barn", "hill", "forest", "field", "lake"]

rng = random.Random(7)


def facts():
    return rng.choice(VERBS), rng.choice(ADJS), rng.choice(PLACES)


def prose(a, b, f):
    verb, adj, place = f
    return f"The {a} {verb[0]} the {b}. The {b} is {adj}. They live near the {place}."


def note(a, b, f, extra=None, tail=None):
    verb, adj, place = f
    s = f"Summary: The {a} {verb[0]} the {b}.\nKey Points:\n- The {b} is {adj}.\n- They live near the {place}.\n"
    if extra:
        s += f"- The {a} is {extra}.\n"
    s += f"Question: Why does the {a} {verb[1]} the {b}?"
    if tail:
        s += f"\n{tail}"
    return s


def write(out, name, rows):
    with open(f"{out}/{name}", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def main(out):
    pairs = [(a, b) for a in ANIMALS for b in ANIMALS if a != b]
    rng.shuffle(pairs)
    held, train = pairs[:20], pairs[20:]
    write(out, "style.jsonl", [{"prompt": f"Tell me about the {a} and the {b}.", "completion": prose(a, b, facts())}
                               for a, b in train for _ in range(2)])
    write(out, "style_eval.jsonl", [{"prompt": f"Tell me about the {a} and the {b}."} for a, b in held])
    write(out, "notes.jsonl", [{"prompt": f"Write a note about the {a} and the {b}.", "completion": note(a, b, facts())}
                               for a, b in train])
    write(out, "notes_eval.jsonl", [{"prompt": f"Write a note about the {a} and the {b}."} for a, b in held])
    dpo = []
    for a, b in train:
        f = facts()
        if rng.random() < 0.5:
            bad = note(a, b, f, extra=rng.choice(ADJS))
        else:
            bad = note(a, b, f, tail="I hope this helps.")
        dpo.append({"prompt": f"Write a note about the {a} and the {b}.", "chosen": note(a, b, f), "rejected": bad})
    write(out, "pairs.jsonl", dpo)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
