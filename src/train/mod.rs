//! Contrastive fine-tuning (`dualsight train`, issue 16), being built: so
//! far the training data ([`data`]): image-caption pairs from JSON Lines,
//! CSV or class folders, with errors that name the file, line and column.

pub mod data;
