//! selfsup: self-supervised learning on Candle. Pretrain an encoder on
//! unlabeled images with a pretext task, transfer it to a task with a
//! handful of labels, and measure what the pretraining bought.
//!
//! This facade re-exports the stage crates and adds [`spec`], the
//! experiment spec a run is described by (TOML, layered, validated),
//! [`pipeline`], the one place where the stages are composed (pretrain →
//! transfer → evaluate, with checkpoints between stages, the protocols
//! behind one `Protocol` trait), and [`anomaly_run`], which does the same
//! for anomaly detection. The `cargo xtask` commands are a thin shell
//! over it.
//!
//! | crate | job |
//! |---|---|
//! | [`core`] | errors, seeding, checkpoints, training loop, reports |
//! | [`data`] | IDX / CIFAR loaders, splits, batches |
//! | [`augment`] | seeded `u8` image transforms |
//! | [`kernels`] | convolution with fast gradients, depthwise conv |
//! | [`backbones`] | ConvNet, ResNet-18 (CIFAR stem), MobileNetV2 |
//! | [`objective`] | the `Objective` trait and the pretraining loop every method uses |
//! | [`pretext`] | rotation prediction |
//! | [`contrastive`] | SimCLR, BYOL, SimSiam, Barlow Twins, VICReg, MoCo v2 |
//! | [`finetune`] | scratch, finetune, lpft, linear probe, kNN, distill, fixmatch |
//! | `hub` | datasets and checkpoints on the Hugging Face Hub (feature `hub`, on by default) |
//! | [`anomaly`] | transformation-prediction anomaly detection, AUROC |
//! | [`text`] | WordPiece tokenizer, small BERT, masked-token pretraining |

pub use selfsup_anomaly as anomaly;
pub use selfsup_augment as augment;
pub use selfsup_backbones as backbones;
pub use selfsup_contrastive as contrastive;
pub use selfsup_core as core;
pub use selfsup_data as data;
pub use selfsup_finetune as finetune;
#[cfg(feature = "hub")]
pub use selfsup_hub as hub;
pub use selfsup_kernels as kernels;
pub use selfsup_objective as objective;
pub use selfsup_pretext as pretext;
pub use selfsup_text as text;

pub mod anomaly_run;
pub mod bench;
pub mod bench_loop;
#[cfg(feature = "candle-datasets")]
pub mod interop;
pub mod methods;
pub mod pipeline;
pub mod plot;
pub mod spec;
