//! The one error type of the core. `py.rs` maps each variant to one Python exception
//! class in `rsllm.errors`, so the mapping lives in exactly one place.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The caller asked for something that can never succeed (a prompt longer than the
    /// context, an invalid parameter). Python: `InvalidRequestError` (a `ValueError`).
    #[error("{0}")]
    InvalidRequest(String),
    /// A request id the core does not know. Python: `UnknownRequestError` (a `KeyError`).
    #[error("unknown request id: {0}")]
    UnknownRequest(String),
    /// A tokenizer file that does not load, or an id outside the vocabulary.
    /// Python: `TokenizerError` (a `ValueError`).
    #[error("{0}")]
    Tokenizer(String),
    /// A broken invariant inside the core: a bug, never the caller's fault.
    /// Python: `EngineCoreError` (a `RuntimeError`).
    #[error("internal error in the rsllm core: {0}")]
    Internal(String),
}

pub type CoreResult<T> = Result<T, CoreError>;
