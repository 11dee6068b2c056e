//! selfsup-hub connects selfsup to the Hugging Face Hub (through hf-hub
//! 1.0, the Rust client):
//!
//! - [`fetch()`]: datasets by name — the public parquet datasets of
//!   [`catalog`] are downloaded once, decoded ([`parquet_images`]) and
//!   stored in the local cache of `selfsup_data::cache`, after which
//!   `--dataset <name>` works everywhere, offline.
//! - [`publish()`]: a run directory becomes a model repository (weights,
//!   config, a model card built from the run's report), uploaded in one
//!   commit; and `--init hub:<user/name>` downloads a published backbone.
//!
//! The endpoint, token and download cache come from the usual environment
//! variables ([`client`]); tests point `HF_ENDPOINT` at a server on
//! 127.0.0.1.

pub mod catalog;
pub mod client;
pub mod fetch;
pub mod parquet_images;
pub mod publish;

pub use fetch::{fetch, FetchOptions, FetchOutcome};
pub use publish::{download_checkpoint, publish, write_folder, PublishOptions, PublishOutcome};
