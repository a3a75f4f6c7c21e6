#!/usr/bin/env python3
"""Build the text demo: a WordPiece tokenizer and a small BERT-like sentence encoder, trained here on
Debian's `fortunes` collections, exported as ONNX, with the text sets the demo, the tests and the
text-drift experiment read. Writes everything under `models/text/` (see its README).

Needs PyTorch and the `tokenizers` package (`~/torch-env/bin/python`; not used by the tests or CI) and
the Debian packages `fortunes`, `fortunes-de`, `fortunes-es` (`apt-get install fortunes fortunes-de
fortunes-es`), read from `/usr/share/games/fortunes`.

    ~/torch-env/bin/python tools/train_text.py [--out models/text] [--seed 20261201]
"""

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
# The reference domain: the topics the encoder is trained to tell apart (its training objective) and
# whose held-out fortunes are the reference and the clean stream.
TOPICS = ["computers", "definitions", "people", "politics", "science", "work", "wisdom", "cookie"]
# Topics the encoder never sees: the topic shift.
SHIFT_TOPICS = ["songs-poems", "startrek", "zippy", "food", "sports", "love", "drugs", "law"]
MIN_CHARS, MAX_CHARS = 20, 400
SET_SIZE = 500
VOCAB = 4000
HIDDEN, LAYERS, HEADS, FFN, MAX_LEN = 64, 2, 4, 128, 128
DROPOUT = 0.1  # BERT's; the training set is small (~5 300 fortunes) and the model overfits without it
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def read_fortunes(path: Path) -> list[str]:
    """One string per fortune (`%` lines separate them), whitespace collapsed; ASCII art and very
    short or long ones dropped."""
    raw = path.read_bytes().decode("utf-8", errors="replace")
    out = []
    for chunk in re.split(r"^%\s*$", raw, flags=re.M):
        text = " ".join(chunk.split())
        if not MIN_CHARS <= len(text) <= MAX_CHARS or "\ufffd" in text:
            continue
        letters = sum(c.isalpha() for c in text)
        if letters < 0.6 * len(text):
            continue
        out.append(text)
    return out


def other_language(folder: str, limit_per_file: int = 10_000) -> list[str]:
    out = []
    for path in sorted((FORTUNES / folder).iterdir()):
        if path.suffix in (".dat", ".u8") or path.is_symlink() or not path.is_file():
            continue
        if "art" in path.name or path.name in ("off",):
            continue
        out.extend(read_fortunes(path)[:limit_per_file])
    return out


def typos(text: str, rng: random.Random, rate: float = 0.08) -> str:
    """Character noise as a hurried typist makes it: per letter, with probability `rate`, one of
    drop, double, swap with the next, or a neighbouring-key substitution."""
    rows = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
    near = {}
    for r in rows:
        for i, c in enumerate(r):
            near[c] = (r[i - 1] if i else "") + (r[i + 1] if i + 1 < len(r) else "")
    chars = list(text)
    out = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if c.isalpha() and rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:
                i += 1
                continue
            if op == 1:
                out += [c, c]
            elif op == 2 and i + 1 < len(chars):
                out += [chars[i + 1], c]
                i += 2
                continue
            else:
                n = near.get(c.lower(), "")
                out.append(rng.choice(n) if n else c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


SPAM_OPENERS = [
    "CONGRATULATIONS! You have been selected", "Dear valued customer,", "URGENT: your account",
    "Limited time offer!!!", "Act now:", "Dear friend,", "FINAL NOTICE:", "Exclusive deal for you:",
]
SPAM_BODIES = [
    "claim your free {prize} today", "your {thing} will expire in {n} hours unless you verify it",
    "get {n}% off all {thing}s, no questions asked", "you won a {prize} worth ${n},000",
    "click the link below to unlock your {prize}", "earn ${n},000 a week working from home",
    "lowest prices on {thing}s guaranteed", "reply YES to receive your {prize}",
]
SPAM_CLOSERS = [
    "Click here to unsubscribe.", "Terms and conditions apply.", "Do not reply to this message.",
    "This offer is valid while supplies last.", "Call now, operators are standing by.",
    "You are receiving this email because you signed up.", "",
]


def spam(rng: random.Random) -> str:
    """Boilerplate spam from a few templates: the same phrasing over and over, as a bot floods a feed."""
    body = rng.choice(SPAM_BODIES).format(
        prize=rng.choice(["iPhone", "gift card", "cruise", "cash prize", "laptop"]),
        thing=rng.choice(["subscription", "password", "membership", "product", "account"]),
        n=rng.randrange(2, 99))
    return " ".join(p for p in (rng.choice(SPAM_OPENERS), body + ".", rng.choice(SPAM_CLOSERS)) if p)


def train_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    # BERT-uncased conventions: clean control characters, lower-case, strip accents.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=SPECIALS,
                                        limit_alphabet=200, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def build_model(torch, vocab: int):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
            self.proj = nn.Linear(HIDDEN, HIDDEN)
            self.ln1 = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.ff1 = nn.Linear(HIDDEN, FFN)
            self.ff2 = nn.Linear(FFN, HIDDEN)
            self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.drop = nn.Dropout(DROPOUT)

        def forward(self, h, bias):
            b, t, _ = h.shape
            d = HIDDEN // HEADS
            q, k, v = self.qkv(h).split(HIDDEN, dim=-1)
            q, k, v = (x.reshape(b, t, HEADS, d).transpose(1, 2) for x in (q, k, v))
            att = self.drop(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1))
            a = (att @ v).transpose(1, 2).reshape(b, t, HIDDEN)
            h = self.ln1(h + self.drop(self.proj(a)))
            return self.ln2(h + self.drop(self.ff2(nn.functional.gelu(self.ff1(h)))))

    class Encoder(nn.Module):
        """BERT-like: token + position embeddings, LayerNorm, post-LN blocks, exact (Erf) GELU, mean
        pooling over the attention mask. The output is the pooled sentence embedding."""

        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, HIDDEN)
            self.pos = nn.Embedding(MAX_LEN, HIDDEN)
            self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.blocks = nn.ModuleList([Block() for _ in range(LAYERS)])
            self.drop = nn.Dropout(DROPOUT)

        def forward(self, input_ids, attention_mask):
            t = input_ids.shape[1]
            pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
            h = self.drop(self.ln(self.tok(input_ids) + self.pos(pos)))
            m = attention_mask.to(h.dtype)
            bias = (1.0 - m[:, None, None, :]) * -10000.0
            for blk in self.blocks:
                h = blk(h, bias)
            w = m.unsqueeze(-1)
            return (h * w).sum(1) / w.sum(1).clamp(min=1.0)

    return Encoder()


def batches(tok, texts, labels, size, rng, torch):
    order = list(range(len(texts)))
    rng.shuffle(order)
    for i in range(0, len(order), size):
        idx = order[i:i + size]
        enc = [tok.encode(texts[j]).ids for j in idx]
        t = max(len(e) for e in enc)
        ids = torch.zeros(len(enc), t, dtype=torch.int64)
        mask = torch.zeros(len(enc), t, dtype=torch.int64)
        for r, e in enumerate(enc):
            ids[r, :len(e)] = torch.tensor(e)
            mask[r, :len(e)] = 1
        yield ids, mask, torch.tensor([labels[j] for j in idx])


def write_jsonl(path: Path, texts: list[str], extra=None):
    with path.open("w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            rec = {"text": t}
            if extra:
                rec.update(extra[i])
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("models/text"))
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse this tokenizer.json instead of training one (the WordPiece trainer breaks "
                         "ties in hash order, so two trainings give slightly different vocabularies; with "
                         "the committed tokenizer the rest of the run is reproducible)")
    args = ap.parse_args()

    import torch
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    # Data: held-out reference and stream sets per topic (stratified), the rest for training.
    train_x, train_y, ref, ref_topic, stream, stream_topic = [], [], [], [], [], []
    per_topic = SET_SIZE // len(TOPICS) + 1
    for label, topic in enumerate(TOPICS):
        items = read_fortunes(FORTUNES / topic)
        rng.shuffle(items)
        ref += items[:per_topic]
        ref_topic += [topic] * per_topic
        stream += items[per_topic:2 * per_topic]
        stream_topic += [topic] * per_topic
        rest = items[2 * per_topic:]
        train_x += rest
        train_y += [label] * len(rest)
        print(f"{topic}: {len(items)} fortunes, {len(rest)} for training")
    ref, ref_topic = ref[:SET_SIZE], ref_topic[:SET_SIZE]
    stream, stream_topic = stream[:SET_SIZE], stream_topic[:SET_SIZE]

    shift = []
    for topic in SHIFT_TOPICS:
        items = read_fortunes(FORTUNES / topic)
        rng.shuffle(items)
        shift += items[:SET_SIZE // len(SHIFT_TOPICS)]
    german = other_language("de")
    spanish = other_language("es")
    rng.shuffle(german)
    rng.shuffle(spanish)
    german, spanish = german[:SET_SIZE], spanish[:SET_SIZE]
    noisy = [typos(t, rng) for t in stream]
    spammy = [spam(rng) for _ in range(SET_SIZE)]

    if args.tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(args.tokenizer))
    else:
        tok = train_tokenizer(train_x)
    tok.save(str(args.out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    print(f"tokenizer: WordPiece, {vocab} tokens")

    model = build_model(torch, vocab)
    head = torch.nn.Linear(HIDDEN, len(TOPICS))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    for epoch in range(args.epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for ids, mask, y in batches(tok, train_x, train_y, 32, rng, torch):
            ids, mask = ids[:, :MAX_LEN], mask[:, :MAX_LEN]
            logits = head(model(ids, mask))
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            total += len(y)
            correct += (logits.argmax(1) == y).sum().item()
        model.eval()
        with torch.no_grad():
            yr = [TOPICS.index(t) for t in stream_topic]
            acc = sum((head(model(i[:, :MAX_LEN], m[:, :MAX_LEN])).argmax(1) == y).sum().item()
                      for i, m, y in batches(tok, stream, yr, 64, random.Random(0), torch)) / len(stream)
        print(f"epoch {epoch + 1}: loss {loss_sum / total:.3f}, train acc {correct / total:.3f}, "
              f"held-out acc {acc:.3f}")

    model.eval()
    onnx_path = args.out / "encoder.onnx"
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(tok.encode(t).ids) for t in ref[:2]],
                                          batch_first=True)
    mask = (ids != 0).to(torch.int64)
    torch.onnx.export(model, (ids, mask), str(onnx_path), input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                    "attention_mask": {0: "batch", 1: "tokens"},
                                    "embedding": {0: "batch"}})
    check_export(torch, model, tok, onnx_path, ref)

    write_jsonl(args.out / "reference.jsonl", ref, [{"topic": t} for t in ref_topic])
    write_jsonl(args.out / "stream.jsonl", stream, [{"topic": t} for t in stream_topic])
    drift = args.out / "drift"
    drift.mkdir(exist_ok=True)
    write_jsonl(drift / "topic.jsonl", shift)
    write_jsonl(drift / "german.jsonl", german)
    write_jsonl(drift / "spanish.jsonl", spanish)
    write_jsonl(drift / "typos.jsonl", noisy)
    write_jsonl(drift / "spam.jsonl", spammy)
    print(f"wrote {args.out}")


def check_export(torch, model, tok, path: Path, texts):
    """The ONNX export must reproduce PyTorch on a padded batch of different lengths."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version <= 13, m.ir_version
    enc = [tok.encode(t).ids[:MAX_LEN] for t in texts[:8]]
    t = max(len(e) for e in enc)
    ids = np.zeros((len(enc), t), np.int64)
    mask = np.zeros((len(enc), t), np.int64)
    for r, e in enumerate(enc):
        ids[r, :len(e)] = e
        mask[r, :len(e)] = 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    diff = float(np.abs(got - want).max())
    print(f"export check: IR {m.ir_version}, opset {m.opset_import[0].version}, "
          f"ops {sorted({n.op_type for n in m.graph.node})}, max |onnx - torch| {diff:.2e}")
    if diff > 1e-4:
        sys.exit("export check FAILED")
    # Padding must not change a sample's embedding.
    one = sess.run(None, {"input_ids": ids[:1, :len(enc[0])], "attention_mask": mask[:1, :len(enc[0])]})[0]
    pad_diff = float(np.abs(one - got[:1]).max())
    print(f"padding check: max |unpadded - padded| {pad_diff:.2e}")
    if pad_diff > 1e-4:
        sys.exit("padding check FAILED")


if __name__ == "__main__":
    main()
