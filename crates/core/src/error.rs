//! The error type shared by the selfsup library crates.

use std::path::PathBuf;

/// Every failure a selfsup library can report. Messages name the file, flag
/// or field at fault and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside Candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file exists but its content is not what was expected.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A user-supplied setting is invalid.
    #[error("invalid {what}: {msg}")]
    Invalid {
        /// The flag or field at fault.
        what: String,
        /// What is wrong and what was expected.
        msg: String,
    },
    /// Training produced a NaN or infinite loss.
    #[error("{stage}: loss became {value} at step {step}; lower the learning rate or check the input data")]
    NonFinite {
        /// The training stage that diverged.
        stage: String,
        /// The optimiser step at which it happened.
        step: usize,
        /// The offending value.
        value: f32,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// A content error in `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    /// An invalid setting named `what`.
    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            msg: msg.into(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
