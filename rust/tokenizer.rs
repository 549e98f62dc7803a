//! A loaded `tokenizer.json`: encode prompts, decode ids, and the per-id table that the
//! incremental detokenizer reads on its hot path.
//!
//! Decoding goes through the `tokenizers` crate (the library behind transformers' fast
//! tokenizers), so `decode` equals `transformers`' `tokenizer.decode`. For the two decoder
//! families that LLMs use — byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen) and SentencePiece
//! with byte fallback (Llama 2, Mistral) — the text of a sequence is the UTF-8 reading of
//! the concatenation of per-token bytes, so a table of those bytes lets the detokenizer
//! stream text without calling the decoder at all. Every other decoder takes the generic
//! (windowed decode) path.

use std::sync::Arc;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::normalizers::replace::Replace;
use tokenizers::Decoder;

use crate::error::{CoreError, CoreResult};

/// How the tokenizer's decoder turns ids into text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKind {
    /// Byte-level BPE: each token's characters map back to bytes; the text is the lossy
    /// UTF-8 reading of all bytes together.
    ByteLevel,
    /// SentencePiece: `▁` becomes a space, `<0xNN>` tokens are raw bytes, the pieces are
    /// fused; with `strip_leading_space` the very first space of the text is dropped
    /// (the Llama 2 `Strip(" ", 1, 0)` decoder).
    SentencePiece { strip_leading_space: bool },
    /// Any other decoder: the detokenizer decodes a small window of recent ids.
    Generic,
}

const KNOWN: u8 = 1;
const SPECIAL: u8 = 2;
const ADDED: u8 = 4;

/// A tokenizer plus the per-id facts the detokenizer needs without a hash lookup.
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    kind: DecodeKind,
    /// `flags[id]`: KNOWN | SPECIAL | ADDED.
    flags: Vec<u8>,
    /// Token `id`'s bytes are `bytes[offsets[id]..offsets[id + 1]]` (empty on the
    /// generic path).
    offsets: Vec<u32>,
    bytes: Vec<u8>,
    special_ids: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl Tokenizer {
    /// Load a `tokenizer.json`.
    pub fn from_file(path: &str) -> CoreResult<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            CoreError::Tokenizer(format!("cannot load tokenizer from {path:?}: {e}"))
        })?;
        Ok(Self::new(inner))
    }

    /// Parse the JSON text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> CoreResult<Self> {
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| CoreError::Tokenizer(format!("cannot parse tokenizer JSON: {e}")))?;
        Ok(Self::new(inner))
    }

    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        let kind = decode_kind(inner.get_decoder());
        let vocab = inner.get_vocab(true);
        let table_len = vocab.values().max().map_or(0, |&max| max as usize + 1);
        let added = inner.get_added_tokens_decoder();
        let added_vocab = inner.get_added_vocabulary();

        let mut flags = vec![0u8; table_len];
        let mut offsets = Vec::with_capacity(table_len + 1);
        let mut bytes = Vec::new();
        offsets.push(0u32);
        for (id, flag) in flags.iter_mut().enumerate() {
            // Exactly what `decode` reads: the added token's text first, then the model's.
            if let Some(token) = inner.id_to_token(id as u32) {
                *flag = KNOWN;
                if added_vocab.is_special_token(&token) {
                    *flag |= SPECIAL;
                }
                match kind {
                    DecodeKind::ByteLevel => push_byte_level_bytes(&token, &mut bytes),
                    DecodeKind::SentencePiece { .. } => {
                        push_sentencepiece_bytes(&token, &mut bytes)
                    }
                    DecodeKind::Generic => {}
                }
            }
            offsets.push(bytes.len() as u32);
        }
        for &id in added.keys() {
            if let Some(flag) = flags.get_mut(id as usize) {
                *flag |= ADDED;
            }
        }
        let mut special_ids: Vec<u32> = added
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(&id, _)| id)
            .collect();
        special_ids.sort_unstable();
        let vocab_size = inner.get_vocab_size(true);
        Self {
            inner: Arc::new(inner),
            kind,
            flags,
            offsets,
            bytes,
            special_ids,
            vocab_size,
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Arc<tokenizers::Tokenizer> {
        &self.inner
    }

    pub fn kind(&self) -> DecodeKind {
        self.kind
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn special_token_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// The added tokens as `(id, content, special)`, sorted by id.
    pub fn added_tokens(&self) -> Vec<(u32, String, bool)> {
        let mut tokens: Vec<(u32, String, bool)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, token)| (id, token.content, token.special))
            .collect();
        tokens.sort_unstable_by_key(|t| t.0);
        tokens
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    #[inline]
    fn flag(&self, id: u32) -> u8 {
        self.flags.get(id as usize).copied().unwrap_or(0)
    }

    /// An id that `decode` knows; anything else is the caller's error.
    #[inline]
    pub fn check_id(&self, id: u32) -> CoreResult<()> {
        if self.flag(id) & KNOWN != 0 {
            Ok(())
        } else {
            Err(CoreError::Tokenizer(format!(
                "token id {id} is not in the vocabulary (size {})",
                self.vocab_size
            )))
        }
    }

    /// Whether `decode(.., skip_special_tokens=true)` drops this id.
    #[inline]
    pub fn is_special(&self, id: u32) -> bool {
        self.flag(id) & SPECIAL != 0
    }

    #[inline]
    pub fn is_added(&self, id: u32) -> bool {
        self.flag(id) & ADDED != 0
    }

    /// The bytes token `id` contributes to the text (byte-level and SentencePiece kinds).
    #[inline]
    pub fn piece(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start as usize..end as usize],
            _ => &[],
        }
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> CoreResult<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| CoreError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encode many texts, on several threads.
    pub fn encode_batch(
        &self,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> CoreResult<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .encode_batch_fast(texts, add_special_tokens)
            .map_err(|e| CoreError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Decode ids; an id outside the vocabulary is an error (the crate would drop it).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> CoreResult<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.decode_checked(ids, skip_special_tokens)
    }

    /// Decode ids already checked with `check_id`.
    pub(crate) fn decode_checked(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> CoreResult<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| CoreError::Tokenizer(format!("cannot decode ids: {e}")))
    }
}

/// Recognise the decoders whose output a per-token byte table reproduces exactly.
fn decode_kind(decoder: Option<&DecoderWrapper>) -> DecodeKind {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => DecodeKind::ByteLevel,
        Some(DecoderWrapper::Sequence(sequence)) => match sequence.get_decoders() {
            [DecoderWrapper::ByteLevel(_)] => DecodeKind::ByteLevel,
            [DecoderWrapper::Replace(replace), DecoderWrapper::ByteFallback(_), DecoderWrapper::Fuse(_), rest @ ..]
                if replaces_metaspace(replace) =>
            {
                match rest {
                    [] => DecodeKind::SentencePiece {
                        strip_leading_space: false,
                    },
                    [DecoderWrapper::Strip(strip)]
                        if strip.content == ' ' && strip.start == 1 && strip.stop == 0 =>
                    {
                        DecodeKind::SentencePiece {
                            strip_leading_space: true,
                        }
                    }
                    _ => DecodeKind::Generic,
                }
            }
            _ => DecodeKind::Generic,
        },
        _ => DecodeKind::Generic,
    }
}

/// Whether a `Replace` decoder turns `▁` into a space (its pattern is private: ask it).
fn replaces_metaspace(replace: &Replace) -> bool {
    replace.content == " "
        && replace
            .decode_chain(vec!["\u{2581}a\u{2581}\u{2581}".to_string()])
            .is_ok_and(|out| out == [" a  "])
}

/// GPT-2's byte <-> printable character table: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100.. in byte order.
fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if code < 256 {
        return printable(code).then_some(code as u8);
    }
    let n = code - 256;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

/// The byte-level decoder's reading of one token: its characters mapped back to bytes,
/// or the token's own UTF-8 when a character is outside the table (added tokens).
fn push_byte_level_bytes(token: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in token.chars() {
        match byte_level_char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

/// SentencePiece's reading of one token: `<0xNN>` is one raw byte, otherwise `▁` is a space.
fn push_sentencepiece_bytes(token: &str, out: &mut Vec<u8>) {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        if let Ok(byte) = u8::from_str_radix(&token[3..5], 16) {
            out.push(byte);
            return;
        }
    }
    for (i, part) in token.split('\u{2581}').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(part.as_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A tiny byte-level BPE tokenizer (GPT-2 style) with two special tokens.
    pub(crate) fn byte_level_json() -> String {
        let mut vocab = serde_vocab();
        for (i, tok) in [
            "Hello",
            "\u{0120}world",
            "\u{0120}",
            "!",
            "\u{00E4}\u{00B8}",
        ]
        .iter()
        .enumerate()
        {
            vocab.push((tok.to_string(), 300 + i as u32));
        }
        tokenizer_json(
            &vocab,
            r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#,
            r#"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#,
            false,
        )
    }

    /// Every single byte as a byte-level character, ids 0..256 shifted by 10.
    fn serde_vocab() -> Vec<(String, u32)> {
        (0u32..256)
            .map(|b| {
                let c = (0u32..0x200)
                    .filter_map(char::from_u32)
                    .find(|&c| byte_level_char_to_byte(c) == Some(b as u8))
                    .expect("every byte has a character");
                (c.to_string(), 10 + b)
            })
            .collect()
    }

    /// A tiny SentencePiece-style tokenizer with byte fallback (Llama 2 decoder).
    pub(crate) fn sentencepiece_json() -> String {
        let mut vocab: Vec<(String, u32)> = (0u32..256)
            .map(|b| (format!("<0x{b:02X}>"), 10 + b))
            .collect();
        for (i, tok) in [
            "\u{2581}Hello",
            "\u{2581}world",
            "\u{2581}",
            "!",
            "\u{2581}\u{2581}",
            "ab",
        ]
        .iter()
        .enumerate()
        {
            vocab.push((tok.to_string(), 300 + i as u32));
        }
        tokenizer_json(
            &vocab,
            r#"{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false}"#,
            r#"{"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}"#,
            true,
        )
    }

    fn tokenizer_json(
        vocab: &[(String, u32)],
        pre_tokenizer: &str,
        decoder: &str,
        byte_fallback: bool,
    ) -> String {
        let mut vocab_json: Vec<String> = vocab
            .iter()
            .map(|(t, i)| format!("{}: {i}", serde_json_string(t)))
            .collect();
        vocab_json.push("\"<s>\": 1".into());
        vocab_json.push("\"</s>\": 2".into());
        vocab_json.push("\"<extra>\": 3".into());
        format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [
              {{"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
              {{"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}},
              {{"id": 3, "content": "<extra>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}}],
            "normalizer": null, "pre_tokenizer": {pre_tokenizer}, "post_processor": null,
            "decoder": {decoder},
            "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": {byte_fallback},
              "vocab": {{{}}}, "merges": []}}}}"#,
            vocab_json.join(", ")
        )
    }

    fn serde_json_string(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || (c as u32) >= 0x7F => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn recognises_decoder_kinds() {
        let byte_level = Tokenizer::from_json(&byte_level_json()).unwrap();
        assert_eq!(byte_level.kind(), DecodeKind::ByteLevel);
        let sp = Tokenizer::from_json(&sentencepiece_json()).unwrap();
        assert_eq!(
            sp.kind(),
            DecodeKind::SentencePiece {
                strip_leading_space: true
            }
        );
    }

    #[test]
    fn byte_table_matches_the_crate_alphabet() {
        let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let mut seen = HashSet::new();
        for c in alphabet {
            let b = byte_level_char_to_byte(c).expect("alphabet char maps to a byte");
            assert!(seen.insert(b));
        }
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn pieces_concatenate_to_decode() {
        for json in [byte_level_json(), sentencepiece_json()] {
            let tok = Tokenizer::from_json(&json).unwrap();
            let ids: Vec<u32> = vec![
                300,
                301,
                302,
                303,
                3,
                301,
                10 + 0xE4,
                10 + 0xB8,
                10 + 0xAD,
                303,
            ];
            let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.piece(id).to_vec()).collect();
            let mut text = String::from_utf8(bytes).unwrap();
            if tok.kind()
                == (DecodeKind::SentencePiece {
                    strip_leading_space: true,
                })
            {
                text.remove(0);
            }
            assert_eq!(tok.decode(&ids, true).unwrap(), text);
        }
    }

    #[test]
    fn unknown_ids_and_bad_files_are_tokenizer_errors() {
        let tok = Tokenizer::from_json(&byte_level_json()).unwrap();
        assert!(matches!(
            tok.decode(&[300, 99_999], true),
            Err(CoreError::Tokenizer(_))
        ));
        assert!(matches!(
            Tokenizer::from_file("/nonexistent/tokenizer.json"),
            Err(CoreError::Tokenizer(_))
        ));
        assert!(matches!(
            Tokenizer::from_json("{not json"),
            Err(CoreError::Tokenizer(_))
        ));
    }

    #[test]
    fn special_and_added_tokens() {
        let tok = Tokenizer::from_json(&sentencepiece_json()).unwrap();
        assert_eq!(tok.special_token_ids(), &[1, 2]);
        assert!(tok.is_special(1) && tok.is_added(1));
        assert!(!tok.is_special(3) && tok.is_added(3));
        assert_eq!(tok.token_to_id("</s>"), Some(2));
        assert_eq!(tok.id_to_token(300).as_deref(), Some("\u{2581}Hello"));
        let ids = tok.encode("Hello wörld!", false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), "Hello wörld!");
    }
}
