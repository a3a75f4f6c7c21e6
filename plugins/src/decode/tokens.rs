//! Token samples: what a text model's inputs are before padding.
//!
//! The contract between the decoders (raw text through the model's tokenizer, `.npz` files with
//! named integer inputs, V2 `INT64` tensors) and the engine: one [`TokenSample`] per sample, *unpadded*
//! (exactly its own tokens, special tokens included), so a batch of them has lengths of its own. The
//! engine pads a batch to its longest sample with the model's pad id, builds the attention mask
//! (1 on a sample's tokens, 0 on padding) and keeps padded positions out of every map and score.

/// One tokenized sample: the ids the model's `input_ids` input takes and, when the model has a
/// token-type input, its ids (same length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSample {
    pub ids: Vec<i64>,
    pub type_ids: Option<Vec<i64>>,
}

impl TokenSample {
    pub fn new(ids: Vec<i64>) -> TokenSample {
        TokenSample { ids, type_ids: None }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
