//! rsllm's core: the bookkeeping of an LLM inference engine, in Rust.
//!
//! The logic modules never name a pyo3 type, so `cargo test` exercises them with no
//! Python; `py` is the one thin binding layer that becomes `rsllm._core`.

pub mod batch;
pub mod block_pool;
pub mod cpu_attention;
pub mod cpu_linear;
pub mod cpu_ops;
pub mod detokenizer;
pub mod error;
pub mod kv_layout;
mod py;
pub mod request;
pub mod scheduler;
pub mod stop;
pub mod thread_team;
pub mod tokenizer;

pub use error::{CoreError, CoreResult};
