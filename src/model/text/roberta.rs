//! RoBERTa and XLM-RoBERTa (`RobertaModel`, `XLMRobertaModel`): BERT's weights
//! and layers; positions count non-padding tokens and start after
//! `pad_token_id` (`create_position_ids_from_input_ids`), so the usable length
//! is `max_position_embeddings - pad_token_id - 1`.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::bert::{Bert, Positions};
use crate::model::config::BertConfig;

pub fn new(c: &BertConfig, vb: VarBuilder) -> Result<Bert> {
    Bert::new(c, Positions::AfterPadding(c.pad_token_id.unwrap_or(1)), vb)
}
