//! The byte string each token stands for, which constrained decoding (llguidance's token trie)
//! needs: a token may hold part of a UTF-8 character, so text is not enough.
//!
//! A byte-level BPE vocabulary spells every byte as one printable character (GPT-2's
//! `bytes_to_unicode`: printable Latin-1 bytes as themselves, the other 68 bytes as U+0100...);
//! undoing that mapping gives the token's bytes. SentencePiece-style vocabularies (Metaspace,
//! byte fallback) spell a space as `▁` and raw bytes as `<0xAB>`.

/// GPT-2's byte-to-character table: `TABLE[b]` is the character that spells byte `b`.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            // Non-printable bytes take the code points from U+0100 on, in byte order.
            let c = char::from_u32(256 + next_extra).unwrap_or('\u{fffd}');
            next_extra += 1;
            c
        };
    }
    table
}

/// Maps byte-level spellings back to bytes.
pub(crate) struct ByteLevelAlphabet {
    /// Indexed by code point; only code points below 512 spell bytes.
    char_to_byte: Vec<Option<u8>>,
}

impl ByteLevelAlphabet {
    pub(crate) fn new() -> Self {
        let mut char_to_byte = vec![None; 512];
        for (b, c) in byte_to_char_table().into_iter().enumerate() {
            if let (Some(slot), Ok(b)) = (char_to_byte.get_mut(c as usize), u8::try_from(b)) {
                *slot = Some(b);
            }
        }
        Self { char_to_byte }
    }

    /// The bytes `token` spells, or `None` when it uses a character outside the alphabet (an
    /// added token written as plain text, like `<|im_start|>` in some vocabularies).
    pub(crate) fn decode(&self, token: &str) -> Option<Vec<u8>> {
        token
            .chars()
            .map(|c| self.char_to_byte.get(c as usize).copied().flatten())
            .collect()
    }
}

/// The bytes of a token in a SentencePiece-style vocabulary: `<0x0A>` is the byte 0x0A, `▁` a
/// space, anything else its UTF-8.
pub(crate) fn sentencepiece_token_bytes(token: &str) -> Vec<u8> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')) {
        if hex.len() == 2 {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return vec![b];
            }
        }
    }
    token.replace('\u{2581}', " ").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        let table = byte_to_char_table();
        let alphabet = ByteLevelAlphabet::new();
        for (b, c) in table.iter().enumerate() {
            assert_eq!(alphabet.decode(&c.to_string()), Some(vec![b as u8]));
        }
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn byte_level_tokens_decode_to_bytes() {
        let alphabet = ByteLevelAlphabet::new();
        assert_eq!(alphabet.decode("Ġworld"), Some(b" world".to_vec()));
        // "é" is C3 A9, spelled "Ã©"; half a character is a valid token.
        assert_eq!(alphabet.decode("Ã©"), Some("é".as_bytes().to_vec()));
        assert_eq!(alphabet.decode("Ã"), Some(vec![0xC3]));
        assert_eq!(
            alphabet.decode("<|im_start|>"),
            Some(b"<|im_start|>".to_vec())
        );
        assert_eq!(alphabet.decode("你"), None);
    }

    #[test]
    fn sentencepiece_tokens_decode_to_bytes() {
        assert_eq!(sentencepiece_token_bytes("<0x0A>"), vec![b'\n']);
        assert_eq!(sentencepiece_token_bytes("\u{2581}the"), b" the".to_vec());
        assert_eq!(sentencepiece_token_bytes("<0xZZ>"), b"<0xZZ>".to_vec());
    }
}
