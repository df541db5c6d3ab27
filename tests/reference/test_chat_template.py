#!/usr/bin/python3
"""Reference test: `lora-worker render` against the REAL jinja chat_template of
the fixture tokenizer_config.json files (qwen2, llama3, mistral), rendered the
way transformers' apply_chat_template does (sandboxed jinja2, trim_blocks,
lstrip_blocks, raise_exception, tojson, special tokens as variables).

Checks, per conversation: identical text; and, when `lora-worker tokenize`
can parse special tokens, identical ids for the jinja text tokenized whole.
The Llama-3.2 template writes today's date when strftime_now is defined (HF
defines it); lorad uses the template's own fallback date, so strftime_now is
left undefined here, which is the same rendering."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.environ.get("LR_FIXTURES", os.path.join(os.path.dirname(ROOT), "shared", "fixtures"))
WORKER = os.path.join(ROOT, os.environ.get("LR_BUILD", "build"), "lora-worker")

passed = failed = skipped = 0


def ok(name):
    global passed
    passed += 1
    print("ok   " + name)


def fail(name, why):
    global failed
    failed += 1
    print("FAIL " + name + ": " + why)


def skip(name, why):
    global skipped
    skipped += 1
    print("skip " + name + ": " + why)


def finish():
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    sys.exit(1 if failed else 0)


try:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    skip("all", "python3-jinja2 is not installed (make deps installs it)")
    finish()

if not os.path.exists(WORKER):
    skip("all", WORKER + " is not built")
    finish()

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_dir(tmp):
    """A tokenizer.json assembled from encoder.json + vocab.bpe with the
    upstream settings (fixtures README), beside the real tokenizer_config."""
    src = os.path.join(FIX, "tokenizers", "llama3")
    cfg = json.load(open(os.path.join(src, "tokenizer_config.json")))
    vocab = json.load(open(os.path.join(src, "encoder.json")))
    merges = [l for l in open(os.path.join(src, "vocab.bpe"), encoding="utf-8").read().split("\n") if l]
    added = [dict(v, id=int(k)) for k, v in cfg["added_tokens_decoder"].items()]
    tj = {
        "version": "1.0", "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab, "merges": merges},
    }
    d = os.path.join(tmp, "llama3")
    os.makedirs(d)
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"))
    json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
    return d, cfg


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def tok_text(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def jinja_render(cfg, messages, add_generation_prompt=False):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    tpl = env.from_string(cfg["chat_template"])
    special = {k: tok_text(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return tpl.render(messages=messages, tools=None, documents=None,
                      add_generation_prompt=add_generation_prompt, **special)


CONVS = [
    [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "Low-rank adapters."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again?"},
     {"role": "assistant", "content": "Hello again, with 3 numbers: 12345."}],
    [{"role": "user", "content": "  spaces around  \n"}, {"role": "assistant", "content": "\nSummary:\nA — b × c ≈ d²\n\nKey Points:\n- one\n"}],
    [{"role": "user", "content": "Ünïcödé 漢字 and emoji 🙂"}, {"role": "assistant", "content": "Sure: 🙂 漢字"}],
]


def probe_tokenize():
    """`lora-worker tokenize --json` parses special tokens unless told
    --split-special; returns whether it is there to use."""
    try:
        h = subprocess.run([WORKER, "tokenize", "--help"], capture_output=True, text=True, timeout=20)
    except OSError:
        return False
    text = h.stdout + h.stderr
    return "--json" in text and "--split-special" in text


def tokenize_whole(tokdir, text):
    r = subprocess.run([WORKER, "tokenize", "--tokenizer", tokdir, "--json"], input=json.dumps([text]).encode(),
                       capture_output=True, timeout=120)
    if r.returncode:
        raise RuntimeError(r.stderr.decode()[-300:])
    return [int(x) for x in json.loads(r.stdout.decode())[0]]


def main():
    flag = probe_tokenize()
    with tempfile.TemporaryDirectory() as tmp:
        l3dir, l3cfg = llama3_dir(tmp)
        models = [
            ("qwen2", os.path.join(FIX, "tokenizers", "qwen2"),
             json.load(open(os.path.join(FIX, "tokenizers", "qwen2", "tokenizer_config.json")))),
            ("llama3", l3dir, l3cfg),
            ("mistral", os.path.join(FIX, "tokenizers", "mistral"),
             json.load(open(os.path.join(FIX, "tokenizers", "mistral", "tokenizer_config.json")))),
        ]
        for name, tokdir, cfg in models:
            convs = [c for c in CONVS if not (name == "mistral" and c[0]["role"] == "system")]
            data = os.path.join(tmp, name + ".jsonl")
            with open(data, "w") as f:
                for c in convs:
                    f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
            for gen in (False, True):
                if gen and name == "mistral":
                    continue  # its template has no generation prompt
                args = [WORKER, "render", "--tokenizer", tokdir] + (["--generation-prompt"] if gen else [])
                r = subprocess.run(args, stdin=open(data, "rb"), capture_output=True, timeout=120)
                tag = "%s%s" % (name, " gen" if gen else "")
                if r.returncode:
                    fail(tag, "render exit %d: %s" % (r.returncode, r.stderr.decode()[-400:]))
                    continue
                rows = [json.loads(l) for l in r.stdout.decode().splitlines()]
                if len(rows) != len(convs):
                    fail(tag, "%d rows rendered for %d conversations" % (len(rows), len(convs)))
                    continue
                for i, (c, row) in enumerate(zip(convs, rows)):
                    if gen:
                        last = max(k for k, m in enumerate(c) if m["role"] == "assistant")
                        c = c[:last]
                    want = jinja_render(cfg, c, add_generation_prompt=gen)
                    case = "%s conv %d text" % (tag, i)
                    if row["text"] != want:
                        fail(case, "render %r\n    jinja  %r" % (row["text"], want))
                    else:
                        ok(case)
                    if len(row["ids"]) != len(row["labels"]):
                        fail("%s conv %d labels" % (tag, i), "ids and labels differ in length")
                    case = "%s conv %d ids" % (tag, i)
                    if not flag:
                        skip(case, "lora-worker tokenize --json is not available")
                        continue
                    try:
                        whole = tokenize_whole(tokdir, want)
                    except Exception as e:  # noqa: BLE001 - report any tool failure
                        fail(case, "tokenize: %s" % e)
                        continue
                    if whole != row["ids"]:
                        fail(case, "ids differ: render %s... vs whole %s..." % (row["ids"][:12], whole[:12]))
                    else:
                        ok(case)
    finish()


main()
