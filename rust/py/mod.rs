//! The Python binding: the only module tree that uses pyo3. Everything here is a thin skin
//! over the pure-Rust logic: convert arguments, release the GIL, map errors.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::error::CoreError;

mod kernels;
mod scheduler;
mod tokenizer;

static ERROR_CLASSES: PyOnceLock<[Py<PyType>; 4]> = PyOnceLock::new();

/// The Python classes live in `rsllm/errors.py` so that they can inherit from both
/// `RsllmError` and a builtin (`ValueError`, `KeyError`), which pyo3's
/// `create_exception!` cannot express.
fn error_classes(py: Python<'_>) -> PyResult<&[Py<PyType>; 4]> {
    ERROR_CLASSES.get_or_try_init(py, || {
        let module = py.import("rsllm.errors")?;
        let get = |name: &str| -> PyResult<Py<PyType>> {
            Ok(module.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok([
            get("InvalidRequestError")?,
            get("UnknownRequestError")?,
            get("TokenizerError")?,
            get("EngineCoreError")?,
        ])
    })
}

/// The one place where a core error becomes a Python exception.
pub(crate) fn to_pyerr(py: Python<'_>, err: CoreError) -> PyErr {
    let index = match err {
        CoreError::InvalidRequest(_) => 0,
        CoreError::UnknownRequest(_) => 1,
        CoreError::Tokenizer(_) => 2,
        CoreError::Internal(_) => 3,
    };
    match error_classes(py) {
        Ok(classes) => PyErr::from_type(classes[index].bind(py).clone(), err.to_string()),
        Err(import_error) => import_error,
    }
}

/// Run `f` with the GIL released, turning a panic into `EngineCoreError` (never an
/// abort) and checking for Ctrl-C once the GIL is back.
pub(crate) fn detach<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Result<T, CoreError> + Send,
{
    let result = py.detach(|| {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(CoreError::Internal(message))
        })
    });
    py.check_signals()?;
    result.map_err(|err| to_pyerr(py, err))
}

/// Raise the Python exception of a given core error; exists so that tests can check
/// the mapping of every variant from Python.
#[pyfunction]
fn _raise_core_error(py: Python<'_>, kind: &str, message: String) -> PyResult<()> {
    let err = match kind {
        "invalid_request" => CoreError::InvalidRequest(message),
        "unknown_request" => CoreError::UnknownRequest(message),
        "tokenizer" => CoreError::Tokenizer(message),
        "internal" => CoreError::Internal(message),
        "panic" => return detach(py, || -> Result<(), CoreError> { panic!("{message}") }),
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown error kind {other:?}"
            )))
        }
    };
    Err(to_pyerr(py, err))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_raise_core_error, m)?)?;
    kernels::register(m)?;
    scheduler::register(m)?;
    tokenizer::register(m)?;
    Ok(())
}
