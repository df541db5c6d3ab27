#!/usr/bin/env python3
"""Writes examples/demo.jsonl: the demo dataset `make run` trains on.

A learnable rule: whatever the question, the assistant answers in one fixed
template ("Answer: ... / Reason: ... / Confidence: ..."), so the loss on the
template tokens falls within a few dozen steps even on a tiny random model.
Deterministic (seeded), so the committed file can be regenerated exactly."""
import json
import random

rng = random.Random(1234)
things = ["the sky", "grass", "snow", "the sea", "a lemon", "coal", "a tomato", "milk",
          "an orange", "a plum", "the sun", "a cloud", "ash", "ivy", "a ruby", "ink"]
colours = ["blue", "green", "white", "blue", "yellow", "black", "red", "white",
           "orange", "purple", "yellow", "grey", "grey", "green", "red", "black"]
verbs = ["What colour is", "Tell me the colour of", "Which colour has", "Name the colour of",
         "Do you know the colour of", "Quick question: what colour is"]
tails = ["", " Please answer briefly.", " Thanks!", " I am curious."]
pairs = [(v, k, t) for v in verbs for k in range(len(things)) for t in tails]
rng.shuffle(pairs)
rows = []
for v, k, t in pairs[:240]:  # 240 distinct questions
    q = f"{v} {things[k]}?{t}"
    a = (f"Answer: {things[k]} is {colours[k]}.\n"
         f"Reason: {things[k]} is usually seen as {colours[k]}.\n"
         f"Confidence: high")
    rows.append({"messages": [{"role": "user", "content": q},
                              {"role": "assistant", "content": a}]})
with open("demo.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
