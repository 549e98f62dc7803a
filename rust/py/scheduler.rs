//! Bindings of the scheduler and the KV block pool (rust/scheduler.rs, block_pool.rs).

use crate::error::CoreError;
use crate::request::{FinishReason, NewRequest};
use crate::scheduler::{Policy, Scheduler, SchedulerConfig};
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyIndexError, PyOverflowError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString};

use super::tokenizer::PyTokenizer;
use super::{detach, to_pyerr};
use crate::detokenizer::DetokenizeParams;

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngineCore>()?;
    m.add_class::<PySchedulerOutput>()?;
    m.add_class::<PyStepOutput>()?;
    Ok(())
}

fn invalid(message: String) -> CoreError {
    CoreError::InvalidRequest(message)
}

fn size(py: Python<'_>, what: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value)
        .map_err(|_| to_pyerr(py, invalid(format!("{what} must be >= 0, got {value}"))))
}

/// Token ids from a list (the common case), a numpy array (no Python object per
/// element) or any other sequence of ints, into `out`.
fn extract_ids(what: &str, obj: &Bound<'_, PyAny>, out: &mut Vec<i64>) -> PyResult<()> {
    let py = obj.py();
    let overflow = |e: PyErr| {
        if e.is_instance_of::<PyOverflowError>(py) {
            to_pyerr(
                py,
                invalid(format!("{what} must be token ids in [0, 2**31)")),
            )
        } else {
            e
        }
    };
    out.clear();
    if let Ok(list) = obj.cast::<PyList>() {
        // Prompts arrive as lists of hundreds of ints: read them through the C API,
        // borrowing each item, at a few ns per token.
        let n = list.len();
        out.reserve(n);
        for i in 0..n {
            // SAFETY: `list` is a live list and the GIL is held; `i < len` and nothing
            // runs between the length check and here that could shrink it, so
            // `PyList_GetItem` returns a valid borrowed reference.
            let value = unsafe {
                let item = pyo3::ffi::PyList_GetItem(list.as_ptr(), i as pyo3::ffi::Py_ssize_t);
                pyo3::ffi::PyLong_AsLongLong(item)
            };
            if value == -1 {
                if let Some(e) = PyErr::take(py) {
                    return Err(overflow(e));
                }
            }
            out.push(value);
        }
    } else if let Ok(a) = obj.cast::<PyArray1<i32>>() {
        out.extend(a.readonly().as_array().iter().map(|&t| i64::from(t)));
    } else if let Ok(a) = obj.cast::<PyArray1<i64>>() {
        out.extend(a.readonly().as_array().iter());
    } else {
        *out = obj.extract::<Vec<i64>>().map_err(overflow)?;
    }
    Ok(())
}

/// One step of the batch: the arrays of DESIGN.md's table (numpy arrays that own
/// their memory, which `torch.from_numpy` wraps without a copy) and the ids that
/// were preempted in this step or aborted since the previous one.
#[pyclass(name = "SchedulerOutput", module = "rsllm._core", frozen)]
pub struct PySchedulerOutput {
    #[pyo3(get)]
    input_ids: Py<PyArray1<i32>>,
    #[pyo3(get)]
    positions: Py<PyArray1<i32>>,
    #[pyo3(get)]
    slot_mapping: Py<PyArray1<i64>>,
    #[pyo3(get)]
    query_start_loc: Py<PyArray1<i32>>,
    #[pyo3(get)]
    seq_lens: Py<PyArray1<i32>>,
    #[pyo3(get)]
    block_tables: Py<PyArray2<i32>>,
    #[pyo3(get)]
    logits_indices: Py<PyArray1<i32>>,
    #[pyo3(get)]
    sampling_mask: Py<PyArray1<bool>>,
    #[pyo3(get)]
    num_computed_tokens: Py<PyArray1<i32>>,
    #[pyo3(get)]
    num_scheduled_tokens: Py<PyArray1<i32>>,
    #[pyo3(get)]
    num_cached_tokens: Py<PyArray1<i32>>,
    #[pyo3(get)]
    req_ids: Py<PyList>,
    #[pyo3(get)]
    preempted_req_ids: Py<PyList>,
    #[pyo3(get)]
    finished_req_ids: Py<PyList>,
    #[pyo3(get)]
    num_reqs: usize,
    #[pyo3(get)]
    total_num_scheduled_tokens: usize,
    #[pyo3(get)]
    max_query_len: usize,
    #[pyo3(get)]
    max_seq_len: usize,
}

#[pymethods]
impl PySchedulerOutput {
    fn __repr__(&self) -> String {
        format!(
            "SchedulerOutput(num_reqs={}, total_num_scheduled_tokens={}, max_query_len={}, \
             max_seq_len={})",
            self.num_reqs, self.total_num_scheduled_tokens, self.max_query_len, self.max_seq_len
        )
    }
}

/// One request's result of `update`. Reads as attributes, and unpacks like the
/// tuple `(request_id, token_id, finished, finish_reason, stop_reason)`.
#[pyclass(name = "StepOutput", module = "rsllm._core", frozen)]
pub struct PyStepOutput {
    #[pyo3(get)]
    request_id: Py<PyString>,
    #[pyo3(get)]
    token_id: u32,
    /// "stop" (EOS or a stop token) or "length" (max_tokens, max_model_len).
    #[pyo3(get)]
    finish_reason: Option<&'static str>,
    /// The stop token id that finished the request (None for EOS).
    stop_reason: Option<u32>,
    /// The stop string that finished the request.
    stop_str: Option<String>,
    /// The new text this token made visible ("" when not detokenizing).
    #[pyo3(get)]
    text: String,
}

#[pymethods]
impl PyStepOutput {
    #[getter]
    fn finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// What finished the request: the stop string, the stop token id, or None (EOS,
    /// length), as vLLM's `stop_reason`.
    #[getter]
    fn stop_reason<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.stop_str {
            Some(s) => Ok(PyString::new(py, s).into_any()),
            None => Ok(self.stop_reason.into_pyobject(py)?.into_any()),
        }
    }

    fn __len__(&self) -> usize {
        5
    }

    fn __getitem__<'py>(&self, py: Python<'py>, index: isize) -> PyResult<Bound<'py, PyAny>> {
        let i = if index < 0 { index + 5 } else { index };
        match i {
            0 => Ok(self.request_id.bind(py).clone().into_any()),
            1 => Ok(self.token_id.into_pyobject(py)?.into_any()),
            2 => Ok(PyBool::new(py, self.finished()).to_owned().into_any()),
            3 => Ok(self.finish_reason.into_pyobject(py)?.into_any()),
            4 => self.stop_reason(py),
            _ => Err(PyIndexError::new_err("StepOutput index out of range")),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "StepOutput(request_id={:?}, token_id={}, finished={}, finish_reason={:?}, \
             stop_reason={:?})",
            self.request_id.bind(py).to_string(),
            self.token_id,
            if self.finished() { "True" } else { "False" },
            self.finish_reason,
            self.stop_reason
        )
    }
}

/// The scheduler and KV block pool, driven one step at a time:
/// `schedule()` -> run the model -> `update(sampled_token_ids)`.
/// Not thread-safe: one thread drives it (the engine loop); calls from another
/// thread while `schedule`/`update` run raise instead of racing.
#[pyclass(name = "EngineCore", module = "rsllm._core")]
pub struct PyEngineCore {
    core: Scheduler,
    /// Each slot's request id as a Python string, so a step hands ids out without
    /// allocating one string per request.
    ids: Vec<Option<Py<PyString>>>,
    scratch: Vec<i64>,
}

impl PyEngineCore {
    fn id_of(&self, py: Python<'_>, slot: u32) -> PyResult<Py<PyString>> {
        match self.ids.get(slot as usize) {
            Some(Some(id)) => Ok(id.clone_ref(py)),
            _ => Err(to_pyerr(
                py,
                CoreError::Internal(format!("slot {slot} has no id")),
            )),
        }
    }
}

#[pymethods]
impl PyEngineCore {
    #[new]
    #[pyo3(signature = (
        *,
        num_blocks,
        block_size = 16,
        max_num_seqs = 256,
        max_num_batched_tokens = 8192,
        max_model_len = 8192,
        enable_prefix_caching = true,
        enable_chunked_prefill = true,
        policy = "fcfs",
        tokenizer = None,
        async_scheduling = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        num_blocks: i64,
        block_size: i64,
        max_num_seqs: i64,
        max_num_batched_tokens: i64,
        max_model_len: i64,
        enable_prefix_caching: bool,
        enable_chunked_prefill: bool,
        policy: &str,
        tokenizer: Option<PyRef<'_, PyTokenizer>>,
        async_scheduling: bool,
    ) -> PyResult<Self> {
        let config = SchedulerConfig {
            num_blocks: size(py, "num_blocks", num_blocks)?,
            block_size: size(py, "block_size", block_size)?,
            max_num_seqs: size(py, "max_num_seqs", max_num_seqs)?,
            max_num_batched_tokens: size(py, "max_num_batched_tokens", max_num_batched_tokens)?,
            max_model_len: size(py, "max_model_len", max_model_len)?,
            enable_prefix_caching,
            enable_chunked_prefill,
            policy: Policy::parse(policy).map_err(|e| to_pyerr(py, e))?,
            async_scheduling,
        };
        let mut core = Scheduler::new(config).map_err(|e| to_pyerr(py, e))?;
        if let Some(tokenizer) = tokenizer {
            core.set_tokenizer(tokenizer.inner.clone());
        }
        Ok(PyEngineCore {
            core,
            ids: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Queue a request. Raises `InvalidRequestError` for a duplicate id, an empty
    /// prompt, negative token ids, or a request that can never fit.
    #[pyo3(signature = (
        request_id,
        prompt_token_ids,
        *,
        max_tokens,
        min_tokens = 0,
        eos_token_ids = Vec::new(),
        stop_token_ids = Vec::new(),
        ignore_eos = false,
        priority = 0,
        cache_salt = None,
        arrival_time = None,
        stop = Vec::new(),
        include_stop_str_in_output = false,
        skip_special_tokens = true,
        spaces_between_special_tokens = true,
        detokenize = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn add_request(
        &mut self,
        py: Python<'_>,
        request_id: Bound<'_, PyString>,
        prompt_token_ids: &Bound<'_, PyAny>,
        max_tokens: i64,
        min_tokens: i64,
        eos_token_ids: Vec<i64>,
        stop_token_ids: Vec<i64>,
        ignore_eos: bool,
        priority: i64,
        cache_salt: Option<String>,
        arrival_time: Option<f64>,
        stop: Vec<String>,
        include_stop_str_in_output: bool,
        skip_special_tokens: bool,
        spaces_between_special_tokens: bool,
        detokenize: Option<bool>,
    ) -> PyResult<()> {
        let mut prompt = Vec::new();
        extract_ids("prompt_token_ids", prompt_token_ids, &mut prompt)?;
        let new = NewRequest {
            request_id: request_id.to_str()?.to_owned(),
            prompt_token_ids: prompt,
            max_tokens,
            min_tokens,
            eos_token_ids,
            stop_token_ids,
            ignore_eos,
            priority,
            cache_salt,
            arrival_time,
            // By default, detokenize whenever the core has a tokenizer.
            detokenize: detokenize
                .unwrap_or(self.core.has_tokenizer())
                .then(|| DetokenizeParams {
                    skip_special_tokens,
                    spaces_between_special_tokens,
                    stop,
                    include_stop_str_in_output,
                    min_tokens: usize::try_from(min_tokens).unwrap_or(0),
                }),
        };
        let slot = self.core.add_request(new).map_err(|e| to_pyerr(py, e))? as usize;
        if self.ids.len() <= slot {
            self.ids.resize_with(slot + 1, || None);
        }
        self.ids[slot] = Some(request_id.unbind());
        Ok(())
    }

    /// Abort a request in any state and free its blocks; the next `schedule()`
    /// reports it in `finished_req_ids`. Unknown ids raise `UnknownRequestError`.
    fn abort_request(&mut self, py: Python<'_>, request_id: &str) -> PyResult<()> {
        let slot = self.core.slot_of(request_id);
        self.core
            .abort_request(request_id)
            .map_err(|e| to_pyerr(py, e))?;
        if let Some(entry) = slot.and_then(|s| self.ids.get_mut(s as usize)) {
            *entry = None;
        }
        Ok(())
    }

    /// Decide the next step (without the GIL) and return its batch.
    fn schedule(&mut self, py: Python<'_>) -> PyResult<PySchedulerOutput> {
        let core = &mut self.core;
        detach(py, || core.schedule().map(|_| ()))?;
        let b = self.core.batch();
        let (r, cols) = (b.num_reqs(), b.max_num_blocks);
        // SAFETY: the array is new, contiguous and not yet visible to any other code;
        // it is filled completely before it is returned.
        let block_tables = unsafe {
            let a = PyArray2::<i32>::new(py, [r, cols], false);
            let dst = a
                .as_slice_mut()
                .map_err(|e| to_pyerr(py, CoreError::Internal(e.to_string())))?;
            self.core.write_block_tables(dst);
            a
        };
        let req_ids = b
            .req_slots
            .iter()
            .map(|&slot| self.id_of(py, slot))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PySchedulerOutput {
            input_ids: PyArray1::from_slice(py, &b.input_ids).unbind(),
            positions: PyArray1::from_slice(py, &b.positions).unbind(),
            slot_mapping: PyArray1::from_slice(py, &b.slot_mapping).unbind(),
            query_start_loc: PyArray1::from_slice(py, &b.query_start_loc).unbind(),
            seq_lens: PyArray1::from_slice(py, &b.seq_lens).unbind(),
            block_tables: block_tables.unbind(),
            logits_indices: PyArray1::from_slice(py, &b.logits_indices).unbind(),
            sampling_mask: PyArray1::from_slice(py, &b.sampling_mask).unbind(),
            num_computed_tokens: PyArray1::from_slice(py, &b.num_computed_tokens).unbind(),
            num_scheduled_tokens: PyArray1::from_slice(py, &b.num_scheduled_tokens).unbind(),
            num_cached_tokens: PyArray1::from_slice(py, &b.num_cached_tokens).unbind(),
            req_ids: PyList::new(py, req_ids)?.unbind(),
            preempted_req_ids: PyList::new(py, &b.preempted_req_ids)?.unbind(),
            finished_req_ids: PyList::new(py, &b.finished_req_ids)?.unbind(),
            num_reqs: r,
            total_num_scheduled_tokens: b.num_tokens(),
            max_query_len: b.max_query_len,
            max_seq_len: b.max_seq_len,
        })
    }

    /// Append the sampled token of each request that sampled (in the order of the
    /// last step's `logits_indices`), check the stop conditions without the GIL,
    /// and free what finished. Returns one `StepOutput` per request that sampled.
    fn update<'py>(
        &mut self,
        py: Python<'py>,
        sampled_token_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        extract_ids("sampled_token_ids", sampled_token_ids, &mut self.scratch)?;
        let (core, sampled) = (&mut self.core, &self.scratch);
        detach(py, || core.update(sampled).map(|_| ()))?;
        let mut rows = Vec::with_capacity(self.core.outputs().len());
        for o in self.core.outputs() {
            rows.push(PyStepOutput {
                request_id: self.id_of(py, o.slot)?,
                token_id: o.token,
                finish_reason: o.finish_reason.map(FinishReason::as_str),
                stop_reason: o.stop_reason,
                stop_str: o.stop_str.clone(),
                text: o.text.clone(),
            });
        }
        for o in self.core.outputs() {
            if o.finish_reason.is_some() {
                self.ids[o.slot as usize] = None;
            }
        }
        PyList::new(py, rows)
    }

    fn has_unfinished_requests(&self) -> bool {
        self.core.has_unfinished_requests()
    }

    #[getter]
    fn num_unfinished_requests(&self) -> usize {
        self.core.num_unfinished()
    }

    #[getter]
    fn num_running(&self) -> usize {
        self.core.num_running()
    }

    #[getter]
    fn num_waiting(&self) -> usize {
        self.core.num_waiting()
    }

    /// Counters of the block pool and the scheduler; prefix-cache queries and hits
    /// count tokens, as vLLM does.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.core.stats();
        let d = PyDict::new(py);
        d.set_item("num_blocks", s.num_blocks)?;
        d.set_item("blocks_in_use", s.blocks_in_use)?;
        d.set_item("free_blocks", s.free_blocks)?;
        d.set_item("cached_blocks", s.cached_blocks)?;
        d.set_item("prefix_cache_queries", s.prefix_cache_queries)?;
        d.set_item("prefix_cache_hits", s.prefix_cache_hits)?;
        d.set_item("num_preemptions", s.num_preemptions)?;
        d.set_item("kv_cache_usage", s.kv_cache_usage)?;
        d.set_item("num_running", s.num_running)?;
        d.set_item("num_waiting", s.num_waiting)?;
        Ok(d)
    }

    /// The tokens a request has generated so far.
    fn get_output_token_ids(&self, py: Python<'_>, request_id: &str) -> PyResult<Vec<u32>> {
        let r = self.core.request(request_id).map_err(|e| to_pyerr(py, e))?;
        Ok(r.output_token_ids().to_vec())
    }

    /// Tokens whose KV is in the cache (prefix hits included).
    fn get_num_computed_tokens(&self, py: Python<'_>, request_id: &str) -> PyResult<usize> {
        let r = self.core.request(request_id).map_err(|e| to_pyerr(py, e))?;
        Ok(r.num_computed_tokens)
    }

    /// Check every internal invariant; raises `EngineCoreError` if one is broken.
    fn _check_invariants(&self, py: Python<'_>) -> PyResult<()> {
        self.core
            .check_invariants()
            .map_err(|m| to_pyerr(py, CoreError::Internal(m)))
    }
}
