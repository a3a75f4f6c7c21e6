#!/usr/bin/env python3
"""Writes `tests/text/token_ids.json`: what the Python `tokenizers` package (the reference
implementation of Hugging Face tokenizers) makes of a fixed set of sentences with the demo model's
`models/text/tokenizer.json`, encoded with special tokens and truncated to `max_length`. The Rust test
(`plugins/src/decode/text/tests.rs`) encodes the same sentences through the `tokenizers` crate and must
get the same ids.

    .venv/bin/python tests/text/make_token_ids.py
"""

import json
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Computers are useless. They can only give you answers. -- Pablo Picasso",
    "",
    "   ",
    "UNIX is user-friendly; it's just picky about who its friends are!",
    "Größere Brötchen für die Bäckerei in Düsseldorf, sagte Herr Müller.",
    "Straße, Maß und Fuß: ẞ ist selten.",
    "¿Dónde está la señora Núñez? ¡Mañana, en el café de la esquina!",
    "El niño comió piña y jalapeños en Año Nuevo.",
    "Tabs\tand\u00a0non-breaking spaces, a zero\u200bwidth space and a\u0007bell.",
    "CJK 東京 and emoji 🙂🚀 mixed in.",
    "e\u0301 (a combining accent) vs \u00e9 (precomposed)",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 150,
    " ".join(["word"] * 60) + " tail",
    " ".join(f"token{i} ünïcödé ñ" for i in range(300)),
]


def main():
    path = ROOT / "models/text/tokenizer.json"
    cases = []
    for max_length in (128, 16):
        tok = Tokenizer.from_file(str(path))
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        for text in SENTENCES:
            enc = tok.encode(text, add_special_tokens=True)
            cases.append({"text": text, "max_length": max_length, "ids": enc.ids, "type_ids": enc.type_ids,
                          "tokens": enc.tokens})
    out = {"tokenizer": "models/text/tokenizer.json", "cases": cases}
    dest = ROOT / "tests/text/token_ids.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {dest} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
