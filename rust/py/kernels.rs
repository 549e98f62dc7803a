//! Bindings of the CPU kernels (rust/cpu_attention.rs). Tensors arrive as numpy views of
//! torch tensors (bf16 as uint16, whose bits it is), so nothing is copied.

use numpy::PyUntypedArrayMethods;
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::prelude::*;

use crate::cpu_attention::{self, as_bf16, as_bf16_mut, DecodeShape};
use crate::error::CoreError;
use crate::kv_layout::Tiled;

use super::{detach, to_pyerr};

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(paged_decode_attention, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(rope, m)?)?;
    m.add_function(wrap_pyfunction!(store_kv, m)?)?;
    m.add_function(wrap_pyfunction!(linear_row, m)?)?;
    m.add_function(wrap_pyfunction!(argmax_rows, m)?)?;
    m.add_function(wrap_pyfunction!(silu_mul, m)?)?;
    Ok(())
}

/// A bad argument from Python (the message names it): `InvalidRequestError`.
fn invalid(py: Python<'_>, msg: String) -> PyErr {
    to_pyerr(py, CoreError::InvalidRequest(msg))
}

/// `$f::<N, E>(args.., view, view_mut)` for the element type that `dtype` names: f32,
/// or bfloat16 as the uint16 numpy holds it (`N`), seen as `Bf16` (`E`).
macro_rules! by_dtype {
    ($py:expr, $what:literal, $dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            "float32" => $f::<f32, f32>($($arg,)* |x| x, |x| x),
            "bfloat16" => $f::<u16, cpu_attention::Bf16>($($arg,)* as_bf16, as_bf16_mut),
            other => Err(invalid(
                $py,
                format!(concat!($what, ": dtype must be float32 or bfloat16, got {:?}"), other),
            )),
        }
    };
}

fn dims<const N: usize>(py: Python<'_>, name: &str, shape: &[usize]) -> PyResult<[usize; N]> {
    <[usize; N]>::try_from(shape).map_err(|_| {
        invalid(
            py,
            format!("{name} must have {N} dimensions, got {shape:?}"),
        )
    })
}

/// RMSNorm of the rows of `x` times `weight` into `out`; with `residual`, first
/// `residual += x` in place and the norm of that. float32 or bfloat16 (as uint16), all
/// C-contiguous, `x`/`residual`/`out` of one shape. Runs without the GIL.
#[pyfunction]
#[pyo3(signature = (x, residual, weight, eps, out, dtype))]
fn rms_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    residual: Option<&Bound<'_, PyAny>>,
    weight: &Bound<'_, PyAny>,
    eps: f32,
    out: &Bound<'_, PyAny>,
    dtype: &str,
) -> PyResult<()> {
    by_dtype!(
        py,
        "rms_norm",
        dtype,
        norm_as(py, x, residual, weight, eps, out)
    )
}

#[allow(clippy::too_many_arguments)]
fn norm_as<N, E>(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    residual: Option<&Bound<'_, PyAny>>,
    weight: &Bound<'_, PyAny>,
    eps: f32,
    out: &Bound<'_, PyAny>,
    view: fn(&[N]) -> &[E],
    view_mut: fn(&mut [N]) -> &mut [E],
) -> PyResult<()>
where
    N: numpy::Element + Sync + Send,
    E: cpu_attention::simd::Load16,
{
    let x = readonly::<N>(py, "x", x)?;
    let w = readonly::<N>(py, "weight", weight)?;
    let mut o = writable::<N>(py, "out", out)?;
    let mut r = residual
        .map(|r| writable::<N>(py, "residual", r))
        .transpose()?;
    if o.shape() != x.shape() || r.as_ref().is_some_and(|r| r.shape() != x.shape()) {
        return Err(invalid(
            py,
            "x, residual and out must have the same shape".into(),
        ));
    }
    if x.shape().last() != Some(&w.len()) || w.ndim() != 1 {
        return Err(invalid(
            py,
            format!(
                "weight of shape {:?} does not match x {:?}",
                w.shape(),
                x.shape()
            ),
        ));
    }
    let xs = view(slice(py, "x", &x)?);
    let ws = view(slice(py, "weight", &w)?);
    let os = view_mut(slice_mut(py, "out", &mut o)?);
    let rs = match r.as_mut() {
        Some(r) => Some(view_mut(slice_mut(py, "residual", r)?)),
        None => None,
    };
    detach(py, || crate::cpu_ops::rms_norm(xs, rs, ws, eps, os))
}

/// Rope on q and k of each token, split out of the fused projections (see
/// `cpu_ops::rope`): `qkv` [T, (heads + 2 Hkv) * D], `cos`/`sin` [T, D], `q_out`
/// [T, heads, D], `k_out`/`v_out` [T, Hkv, D]. float32 or bfloat16 (as uint16), all
/// C-contiguous. Runs without the GIL.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn rope(
    py: Python<'_>,
    qkv: &Bound<'_, PyAny>,
    cos: &Bound<'_, PyAny>,
    sin: &Bound<'_, PyAny>,
    q_out: &Bound<'_, PyAny>,
    k_out: &Bound<'_, PyAny>,
    v_out: &Bound<'_, PyAny>,
    dtype: &str,
) -> PyResult<()> {
    by_dtype!(
        py,
        "rope",
        dtype,
        rope_as(py, (qkv, cos, sin), (q_out, k_out, v_out))
    )
}

type Three<'a, 'py> = (
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
);

fn rope_as<N, E>(
    py: Python<'_>,
    (qkv, cos, sin): Three<'_, '_>,
    (q_out, k_out, v_out): Three<'_, '_>,
    view: fn(&[N]) -> &[E],
    view_mut: fn(&mut [N]) -> &mut [E],
) -> PyResult<()>
where
    N: numpy::Element + Sync + Send,
    E: cpu_attention::simd::Load16,
{
    let qkv = readonly::<N>(py, "qkv", qkv)?;
    let cos = readonly::<N>(py, "cos", cos)?;
    let sin = readonly::<N>(py, "sin", sin)?;
    let mut q = writable::<N>(py, "q_out", q_out)?;
    let mut k = writable::<N>(py, "k_out", k_out)?;
    let mut v = writable::<N>(py, "v_out", v_out)?;
    let (&[.., heads, head_dim], &[.., kv_heads, kd]) = (q.shape(), k.shape()) else {
        return Err(invalid(
            py,
            "rope: q_out must be [T, heads, head_dim] and k_out, v_out [T, kv_heads, head_dim]"
                .into(),
        ));
    };
    if kd != head_dim || v.shape() != k.shape() {
        return Err(invalid(
            py,
            "rope: k_out and v_out must be [T, kv_heads, head_dim] with q_out's head_dim".into(),
        ));
    }
    let shape = crate::cpu_ops::RopeShape {
        heads,
        kv_heads,
        head_dim,
    };
    let qkv = view(slice(py, "qkv", &qkv)?);
    let cos = view(slice(py, "cos", &cos)?);
    let sin = view(slice(py, "sin", &sin)?);
    let q = view_mut(slice_mut(py, "q_out", &mut q)?);
    let k = view_mut(slice_mut(py, "k_out", &mut k)?);
    let v = view_mut(slice_mut(py, "v_out", &mut v)?);
    detach(py, || crate::cpu_ops::rope(shape, qkv, cos, sin, q, k, v))
}

/// Each token's key and value (`key`, `value` [T, Hkv, D]) into its slot (`slots` [T]
/// int64) of the tiled caches (see `kv_layout`). float32 or bfloat16 (as uint16),
/// C-contiguous. Runs without the GIL.
#[pyfunction]
fn store_kv(
    py: Python<'_>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    slots: PyReadonlyArray1<'_, i64>,
    key_cache: &Bound<'_, PyAny>,
    value_cache: &Bound<'_, PyAny>,
    dtype: &str,
) -> PyResult<()> {
    let slots = slots
        .as_slice()
        .map_err(|_| invalid(py, "slots must be C-contiguous".into()))?;
    let args = (key, value, key_cache, value_cache);
    by_dtype!(py, "store_kv", dtype, store_as(py, args, slots))
}

type Four<'a, 'py> = (
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
    &'a Bound<'py, PyAny>,
);

fn store_as<N, E>(
    py: Python<'_>,
    (key, value, key_cache, value_cache): Four<'_, '_>,
    slots: &[i64],
    view: fn(&[N]) -> &[E],
    view_mut: fn(&mut [N]) -> &mut [E],
) -> PyResult<()>
where
    N: numpy::Element + Send + Sync,
    E: Copy + Send + Sync,
{
    let k = readonly::<N>(py, "key", key)?;
    let v = readonly::<N>(py, "value", value)?;
    let mut kc = writable::<N>(py, "key_cache", key_cache)?;
    let mut vc = writable::<N>(py, "value_cache", value_cache)?;
    let [_, kv_heads, pairs, block_size, _] = tiled_dims(py, "store_kv", kc.shape(), vc.shape())?;
    let layout = Tiled::new(block_size, kv_heads, 2 * pairs).map_err(|e| to_pyerr(py, e))?;
    let k = view(slice(py, "key", &k)?);
    let v = view(slice(py, "value", &v)?);
    let kc = view_mut(slice_mut(py, "key_cache", &mut kc)?);
    let vc = view_mut(slice_mut(py, "value_cache", &mut vc)?);
    detach(py, || layout.store(k, v, slots, kc, vc))
}

/// `out = x W^T (+ bias)` for one row `x` [1, K] in bfloat16 (uint16 bits): W [N, K],
/// bias [N] or None, out [1, N]; C-contiguous. Runs without the GIL.
#[pyfunction]
fn linear_row(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let x = readonly::<u16>(py, "x", x)?;
    let w = readonly::<u16>(py, "weight", weight)?;
    let b = bias.map(|b| readonly::<u16>(py, "bias", b)).transpose()?;
    let mut o = writable::<u16>(py, "out", out)?;
    let xs = as_bf16(slice(py, "x", &x)?);
    let ws = as_bf16(slice(py, "weight", &w)?);
    let bs = match b.as_ref() {
        Some(b) => Some(as_bf16(slice(py, "bias", b)?)),
        None => None,
    };
    let os = as_bf16_mut(slice_mut(py, "out", &mut o)?);
    detach(py, || crate::cpu_linear::linear_row(xs, ws, bs, os))
}

/// `out[r]` = index of the first maximum of row r of `x` [S, V] (float32, or bfloat16 as
/// uint16; a NaN counts as the maximum, as in torch); out int64 [S]. Runs without the GIL.
#[pyfunction]
fn argmax_rows(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mut out: numpy::PyReadwriteArray1<'_, i64>,
    dtype: &str,
) -> PyResult<()> {
    let os = slice_mut(py, "out", &mut out)?;
    by_dtype!(py, "argmax_rows", dtype, argmax_as(py, x, os))
}

fn argmax_as<N, E>(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    out: &mut [i64],
    view: fn(&[N]) -> &[E],
    _: fn(&mut [N]) -> &mut [E],
) -> PyResult<()>
where
    N: numpy::Element + Sync,
    E: cpu_attention::simd::Load16,
{
    let x = readonly::<N>(py, "x", x)?;
    let len = *x.shape().last().unwrap_or(&0);
    let xs = view(slice(py, "x", &x)?);
    detach(py, || crate::cpu_ops::argmax_rows(xs, len, out))
}

/// `out = silu(gate) * up` for `gate_up` [T, 2I] = [gate | up] into `out` [T, I];
/// float32 or bfloat16 (as uint16), C-contiguous. Runs without the GIL.
#[pyfunction]
fn silu_mul(
    py: Python<'_>,
    gate_up: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    dtype: &str,
) -> PyResult<()> {
    by_dtype!(py, "silu_mul", dtype, silu_as(py, gate_up, out))
}

fn silu_as<N, E>(
    py: Python<'_>,
    gate_up: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    view: fn(&[N]) -> &[E],
    view_mut: fn(&mut [N]) -> &mut [E],
) -> PyResult<()>
where
    N: numpy::Element + Sync + Send,
    E: cpu_attention::simd::Load16,
{
    let g = readonly::<N>(py, "gate_up", gate_up)?;
    let mut o = writable::<N>(py, "out", out)?;
    let inter = *o.shape().last().unwrap_or(&0);
    let gs = view(slice(py, "gate_up", &g)?);
    let os = view_mut(slice_mut(py, "out", &mut o)?);
    detach(py, || crate::cpu_ops::silu_mul(gs, os, inter))
}

/// The threads the CPU kernels run on: "openmp" (torch's team, when the process has
/// GNU OpenMP loaded) or "rayon".
#[pyfunction]
fn kernel_runtime() -> &'static str {
    crate::thread_team::runtime()
}

/// `out[s, h] = softmax(scale * query[s, h] . K^T) V` over each sequence's first
/// `seq_lens[s]` cached positions (one decode token per sequence).
///
/// query and out `[S, Hq, D]`, caches tiled (`[num_blocks, Hkv, D / 2, block_size, 2]`
/// and `[num_blocks, Hkv, block_size / 2, D, 2]`, see `kv_layout`), all float32 or
/// all bfloat16 viewed as uint16 (`dtype` says which); block_tables `[S, max_blocks]` and
/// seq_lens `[S]` int32. Every array must be C-contiguous. Runs without the GIL.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn paged_decode_attention(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    key_cache: &Bound<'_, PyAny>,
    value_cache: &Bound<'_, PyAny>,
    block_tables: PyReadonlyArray2<'_, i32>,
    seq_lens: PyReadonlyArray1<'_, i32>,
    scale: f32,
    out: &Bound<'_, PyAny>,
    dtype: &str,
) -> PyResult<()> {
    let bt_shape = block_tables.shape().to_vec();
    let bt = block_tables
        .as_slice()
        .map_err(|_| invalid(py, "block_tables must be C-contiguous".into()))?;
    let sl = seq_lens
        .as_slice()
        .map_err(|_| invalid(py, "seq_lens must be C-contiguous".into()))?;
    let args = (query, key_cache, value_cache, out);
    by_dtype!(
        py,
        "paged_decode_attention",
        dtype,
        attention_as(py, args, bt, &bt_shape, sl, scale)
    )
}

#[allow(clippy::too_many_arguments)]
fn attention_as<N, E>(
    py: Python<'_>,
    (query, key_cache, value_cache, out): Four<'_, '_>,
    block_tables: &[i32],
    bt_shape: &[usize],
    seq_lens: &[i32],
    scale: f32,
    view: fn(&[N]) -> &[E],
    view_mut: fn(&mut [N]) -> &mut [E],
) -> PyResult<()>
where
    N: numpy::Element + Sync,
    E: cpu_attention::Elem + cpu_attention::simd::Load16,
{
    let q = readonly::<N>(py, "query", query)?;
    let k = readonly::<N>(py, "key_cache", key_cache)?;
    let v = readonly::<N>(py, "value_cache", value_cache)?;
    let mut o = writable::<N>(py, "out", out)?;
    let [num_seqs, num_heads, head_dim] = dims::<3>(py, "query", q.shape())?;
    let [num_blocks, num_kv_heads, pairs, block_size, _] =
        tiled_dims(py, "paged_decode_attention", k.shape(), v.shape())?;
    let [_, max_blocks] = dims::<2>(py, "block_tables", bt_shape)?;
    if 2 * pairs != head_dim || o.shape() != q.shape() {
        return Err(invalid(
            py,
            "query/out and key/value caches disagree in shape".into(),
        ));
    }
    let shape = DecodeShape {
        num_seqs,
        num_heads,
        num_kv_heads,
        head_dim,
        num_blocks,
        block_size,
        max_blocks,
    };
    let qs = view(slice(py, "query", &q)?);
    let ks = view(slice(py, "key_cache", &k)?);
    let vs = view(slice(py, "value_cache", &v)?);
    let os = view_mut(slice_mut(py, "out", &mut o)?);
    detach(py, || {
        cpu_attention::paged_decode_attention(shape, qs, ks, vs, block_tables, seq_lens, scale, os)
    })
}

/// The dims of a tiled key cache `[blocks, kv_heads, head_dim / 2, block_size, 2]`,
/// checked against its value cache `[blocks, kv_heads, block_size / 2, head_dim, 2]`.
fn tiled_dims(
    py: Python<'_>,
    what: &str,
    key_shape: &[usize],
    value_shape: &[usize],
) -> PyResult<[usize; 5]> {
    let k = dims::<5>(py, "key_cache", key_shape)?;
    let [blocks, heads, pairs, block_size, two] = k;
    let v = [blocks, heads, block_size / 2, 2 * pairs, 2];
    if two != 2 || !block_size.is_multiple_of(2) || value_shape != v {
        return Err(invalid(
            py,
            format!(
                "{what}: caches must be tiled: key [blocks, kv_heads, head_dim / 2, \
                 block_size, 2] and value [blocks, kv_heads, block_size / 2, head_dim, 2], \
                 got {:?} and {:?}",
                key_shape, value_shape
            ),
        ));
    }
    Ok(k)
}

fn readonly<'py, N: numpy::Element>(
    py: Python<'py>,
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<PyReadonlyArrayDyn<'py, N>> {
    obj.extract::<PyReadonlyArrayDyn<'py, N>>().map_err(|_| {
        let got = obj
            .getattr("dtype")
            .map(|d| d.to_string())
            .unwrap_or_else(|_| obj.get_type().to_string());
        invalid(
            py,
            format!(
                "{name} must be a numpy array of {}, got {got}",
                std::any::type_name::<N>()
            ),
        )
    })
}

fn slice<'a, N: numpy::Element>(
    py: Python<'_>,
    name: &str,
    a: &'a PyReadonlyArrayDyn<'_, N>,
) -> PyResult<&'a [N]> {
    a.as_slice()
        .map_err(|_| invalid(py, format!("{name} must be C-contiguous")))
}

fn writable<'py, N: numpy::Element>(
    py: Python<'py>,
    name: &str,
    obj: &Bound<'py, PyAny>,
) -> PyResult<PyReadwriteArrayDyn<'py, N>> {
    obj.extract::<PyReadwriteArrayDyn<'py, N>>().map_err(|_| {
        invalid(
            py,
            format!("{name} must be a writable numpy array of the inputs' type, not aliasing one of them"),
        )
    })
}

fn slice_mut<'a, N: numpy::Element, D: numpy::ndarray::Dimension>(
    py: Python<'_>,
    name: &str,
    a: &'a mut numpy::PyReadwriteArray<'_, N, D>,
) -> PyResult<&'a mut [N]> {
    a.as_slice_mut()
        .map_err(|_| invalid(py, format!("{name} must be C-contiguous")))
}
