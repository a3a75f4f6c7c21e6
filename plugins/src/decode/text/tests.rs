use std::path::{Path, PathBuf};

use super::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn demo(max_length: usize) -> TextTokenizer {
    TextTokenizer::from_file(&root().join("models/text/tokenizer.json"), max_length, false).unwrap()
}

/// The ids the Python `tokenizers` package produced (`tests/text/make_token_ids.py`), for plain,
/// accented German and Spanish, empty, whitespace-only, control-character, CJK/emoji and over-long
/// texts, at two truncation lengths.
#[test]
fn agrees_with_the_python_tokenizers_package() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/text/token_ids.json")).unwrap())
            .unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let (long, short) = (demo(128), demo(16));
    let limits = Limits::default();
    let mut truncated = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let max_length = case["max_length"].as_u64().unwrap() as usize;
        let want: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let tok = if max_length == 128 { &long } else { &short };
        let got = tok.encode("case", text, &limits).unwrap();
        assert_eq!(got.ids, want, "max_length {max_length}, text {text:?}");
        assert!(got.type_ids.is_none());
        truncated += usize::from(want.len() == max_length);
    }
    // The fixture does exercise truncation, and non-ASCII text maps to known tokens, not all [UNK].
    assert!(truncated >= 4, "{truncated} truncated cases");
    let unk = long.inner.token_to_id("[UNK]").map(i64::from).unwrap();
    let german = long.encode("de", "Größere Brötchen für die Bäckerei", &limits).unwrap();
    assert!(german.ids.iter().filter(|&&i| i != unk).count() > 4, "{:?}", long.tokens(&german.ids));
}

#[test]
fn special_tokens_pad_id_and_type_ids() {
    let tok = demo(128);
    let limits = Limits::default();
    let s = tok.encode("e", "", &limits).unwrap();
    // An empty text is its special tokens only: [CLS] [SEP].
    assert_eq!(tok.tokens(&s.ids), ["[CLS]", "[SEP]"]);
    assert_eq!(tok.pad_id(), Some(0));
    let specials = tok.special_ids();
    assert_eq!(specials, vec![0, 1, 2, 3, 4]);
    assert!(tok.vocab_size() > 1000);
    let typed = TextTokenizer::from_file(&root().join("models/text/tokenizer.json"), 128, true).unwrap();
    let s = typed.encode("t", "hello world", &limits).unwrap();
    assert_eq!(s.type_ids.as_deref(), Some(&vec![0; s.ids.len()][..]));
}

#[test]
fn text_files_one_sample_per_line() {
    let tok = demo(32);
    let limits = Limits::default();
    let s =
        tok.decode("a.txt", "txt", "first line\n\n  \nsecond line\r\nthird\n".as_bytes(), &limits).unwrap();
    assert_eq!(s.len(), 3);
    let j = "{\"text\": \"first line\", \"topic\": \"x\"}\n\n{\"text\": \"Ñandú\"}\n";
    let s2 = tok.decode("a.jsonl", "jsonl", j.as_bytes(), &limits).unwrap();
    assert_eq!(s2.len(), 2);
    assert_eq!(s2[0], s[0]);
}

#[test]
fn bad_text_is_refused_with_a_reason() {
    let tok = demo(32);
    let limits = Limits::default();
    let e = tok.decode("bad.txt", "txt", b"ok\n\xff\xfe broken", &limits).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    assert!(e.message.contains("bad.txt") && e.message.contains("UTF-8"), "{}", e.message);
    let e = tok.decode("r.jsonl", "jsonl", b"{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", &limits).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    assert!(e.message.contains("line 2") && e.message.contains("\"text\""), "{}", e.message);
    let e = tok.decode("n.jsonl", "jsonl", b"{\"text\": 5}\n", &limits).unwrap_err();
    assert!(e.message.contains("a number"), "{}", e.message);
    let e = tok.decode("j.jsonl", "jsonl", b"not json\n", &limits).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    let e = tok.decode("blank.txt", "txt", b"\n \n", &limits).unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    let small = Limits { max_elements_per_sample: 10, max_elements_per_file: 40, ..Limits::default() };
    let e = tok.decode("big.txt", "txt", b"a text longer than ten bytes\n", &small).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
    assert!(e.message.contains("max_elements_per_sample"), "{}", e.message);
    let e = tok.decode("huge.txt", "txt", "short\n".repeat(10).as_bytes(), &small).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
    let deep = format!("{}{}\n", "[".repeat(100), "]".repeat(100));
    let e = tok.decode("deep.jsonl", "jsonl", deep.as_bytes(), &limits).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
}

#[test]
fn a_broken_tokenizer_file_is_a_clear_error() {
    let e = TextTokenizer::from_bytes(b"{\"not\": \"a tokenizer\"}", Path::new("t.json"), 128, false)
        .unwrap_err();
    assert!(format!("{e:#}").contains("t.json"), "{e:#}");
    let e = TextTokenizer::from_file(&root().join("models/text/tokenizer.json"), 1, false).unwrap_err();
    assert!(format!("{e:#}").contains("max_length"), "{e:#}");
    let e = TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"), 128, false).unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/tokenizer.json"), "{e:#}");
}
