//! Bindings of the tokenizer and the detokenizer (rust/tokenizer.rs, detokenizer.rs, stop.rs).

use crate::detokenizer::{DetokenizeParams, DetokenizerBatch};
use crate::error::CoreError;
use crate::tokenizer::{DecodeKind, Tokenizer};
use pyo3::exceptions::{PyOverflowError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use std::sync::Arc;

use super::{detach, to_pyerr};

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyDetokenizerBatch>()?;
    Ok(())
}

/// Token ids from Python: a list (fast path) or any sequence of ints. Ints that are
/// negative, too large or not in the vocabulary are `TokenizerError`s (checked later).
fn extract_ids(py: Python<'_>, ids: &Bound<'_, PyAny>, out: &mut Vec<u32>) -> PyResult<()> {
    let as_tokenizer_error = |err: PyErr| {
        if err.is_instance_of::<PyOverflowError>(py) {
            to_pyerr(
                py,
                CoreError::Tokenizer(format!("token id out of range: {err}")),
            )
        } else {
            err
        }
    };
    let mut push = |item: Bound<'_, PyAny>| -> PyResult<()> {
        let id: i64 = item.extract().map_err(as_tokenizer_error)?;
        let id = u32::try_from(id).map_err(|_| {
            to_pyerr(
                py,
                CoreError::Tokenizer(format!("token id {id} is not in the vocabulary")),
            )
        })?;
        out.push(id);
        Ok(())
    };
    if let Ok(list) = ids.cast::<PyList>() {
        for item in list.iter() {
            push(item)?;
        }
    } else {
        if ids.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "token ids must be a sequence of ints, not str",
            ));
        }
        for item in ids.try_iter()? {
            push(item?)?;
        }
    }
    Ok(())
}

fn ids_vec(py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let mut out = Vec::new();
    extract_ids(py, ids, &mut out)?;
    Ok(out)
}

/// A `tokenizer.json` loaded by the Rust `tokenizers` crate.
#[pyclass(name = "Tokenizer", module = "rsllm._core", frozen)]
pub(super) struct PyTokenizer {
    pub(super) inner: Arc<Tokenizer>,
}

#[pymethods]
impl PyTokenizer {
    /// Load a `tokenizer.json`; a missing or malformed file is a `TokenizerError`.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let path = path.to_string_lossy().into_owned();
        let tokenizer = detach(py, || Tokenizer::from_file(&path))?;
        Ok(Self {
            inner: Arc::new(tokenizer),
        })
    }

    /// Token ids of `text` (no BOS unless `add_special_tokens`).
    #[pyo3(signature = (text, add_special_tokens = false))]
    fn encode(&self, py: Python<'_>, text: String, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        detach(py, || self.inner.encode(&text, add_special_tokens))
    }

    /// Token ids of each text, on several threads, with the GIL released.
    #[pyo3(signature = (texts, add_special_tokens = false))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        detach(py, || self.inner.encode_batch(texts, add_special_tokens))
    }

    /// The text of `ids`; an id outside the vocabulary is a `TokenizerError`.
    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<String> {
        let ids = ids_vec(py, ids)?;
        detach(py, || self.inner.decode(&ids, skip_special_tokens))
    }

    /// Number of tokens, added tokens included.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|id| self.inner.id_to_token(id))
    }

    /// Ids of the special added tokens (skipped by `skip_special_tokens`), sorted.
    #[getter]
    fn special_token_ids(&self) -> Vec<u32> {
        self.inner.special_token_ids().to_vec()
    }

    /// The added tokens: id -> (content, special).
    #[getter]
    fn added_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (id, content, special) in self.inner.added_tokens() {
            dict.set_item(id, (content, special))?;
        }
        Ok(dict)
    }

    /// How the detokenizer streams this tokenizer's text: "byte_level", "sentencepiece"
    /// (both from a per-token byte table) or "generic" (windowed decode).
    #[getter]
    fn decoder_kind(&self) -> &'static str {
        match self.inner.kind() {
            DecodeKind::ByteLevel => "byte_level",
            DecodeKind::SentencePiece { .. } => "sentencepiece",
            DecodeKind::Generic => "generic",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(vocab_size={}, decoder_kind={:?})",
            self.inner.vocab_size(),
            self.decoder_kind()
        )
    }
}

/// Per-request incremental detokenizers with stop strings, advanced once per step.
#[pyclass(name = "DetokenizerBatch", module = "rsllm._core")]
struct PyDetokenizerBatch {
    inner: DetokenizerBatch,
}

#[pymethods]
impl PyDetokenizerBatch {
    #[new]
    fn new(tokenizer: &PyTokenizer) -> Self {
        Self {
            inner: DetokenizerBatch::new(tokenizer.inner.clone()),
        }
    }

    /// Start a request; the prompt ids give its first output token the right leading
    /// space. A request id already present is an `InvalidRequestError`.
    #[pyo3(signature = (
        request_id, prompt_token_ids, *, skip_special_tokens = true,
        spaces_between_special_tokens = true, stop = Vec::new(),
        include_stop_str_in_output = false, min_tokens = 0,
    ))]
    #[pyo3(
        text_signature = "($self, request_id, prompt_token_ids, *, skip_special_tokens=True, \
        spaces_between_special_tokens=True, stop=(), include_stop_str_in_output=False, min_tokens=0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn add_request(
        &mut self,
        py: Python<'_>,
        request_id: &str,
        prompt_token_ids: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
        spaces_between_special_tokens: bool,
        stop: Vec<String>,
        include_stop_str_in_output: bool,
        min_tokens: i64,
    ) -> PyResult<()> {
        let prompt = ids_vec(py, prompt_token_ids)?;
        let min_tokens = usize::try_from(min_tokens).map_err(|_| {
            to_pyerr(
                py,
                CoreError::InvalidRequest(format!("min_tokens must be >= 0, got {min_tokens}")),
            )
        })?;
        let params = DetokenizeParams {
            skip_special_tokens,
            spaces_between_special_tokens,
            stop,
            include_stop_str_in_output,
            min_tokens,
        };
        self.inner
            .add_request(request_id, &prompt, params)
            .map_err(|err| to_pyerr(py, err))
    }

    /// Push each request's new token ids; returns `(request_id, new_text, stop_str)` per
    /// update, in order. A request whose stop string matched is finished and removed.
    /// Runs with the GIL released; unknown request -> `UnknownRequestError`, unknown
    /// token id -> `TokenizerError`, and then no request has advanced.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        updates: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyList>> {
        let count = updates.len();
        let mut names: Vec<Bound<'py, PyString>> = Vec::with_capacity(count);
        let mut flat: Vec<u32> = Vec::with_capacity(count);
        let mut ends: Vec<usize> = Vec::with_capacity(count);
        for item in updates.iter() {
            let pair = item.cast_into::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("each update must be a (request_id, token_ids) tuple")
            })?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each update must be a (request_id, token_ids) tuple",
                ));
            }
            names.push(pair.get_item(0)?.cast_into::<PyString>()?);
            extract_ids(py, &pair.get_item(1)?, &mut flat)?;
            ends.push(flat.len());
        }
        let keys = names
            .iter()
            .map(|name| name.to_str())
            .collect::<PyResult<Vec<&str>>>()?;
        let mut start = 0;
        let batch: Vec<(&str, &[u32])> = keys
            .iter()
            .zip(&ends)
            .map(|(&key, &end)| {
                let ids = &flat[start..end];
                start = end;
                (key, ids)
            })
            .collect();
        let inner = &mut self.inner;
        let outputs = detach(py, || inner.step(&batch))?;
        let rows = outputs
            .iter()
            .zip(names)
            .map(|(output, name)| {
                let stop = match &output.stop {
                    Some(stop) => PyString::new(py, stop).into_any(),
                    None => py.None().into_bound(py),
                };
                PyTuple::new(
                    py,
                    [
                        name.into_any(),
                        PyString::new(py, &output.text).into_any(),
                        stop,
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// End a request that stopped for another reason (EOS, length); returns the text it
    /// still held back (an incomplete character as U+FFFD, a partial stop string).
    fn finish(&mut self, py: Python<'_>, request_id: &str) -> PyResult<String> {
        self.inner
            .finish(request_id)
            .map_err(|err| to_pyerr(py, err))
    }

    /// Drop a request and whatever text it held back.
    fn abort_request(&mut self, py: Python<'_>, request_id: &str) -> PyResult<()> {
        self.inner
            .abort(request_id)
            .map_err(|err| to_pyerr(py, err))
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, request_id: &str) -> bool {
        self.inner.contains(request_id)
    }
}
