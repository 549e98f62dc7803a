//! Run a kernel's independent work items on the threads that torch computes with.
//!
//! A CPU has as many cores as torch has OpenMP threads, and after every torch op those
//! threads spin for a while waiting for the next one. A second pool of our own (rayon)
//! would compete with the spinning threads for the same cores, and measured that way the
//! decode attention kernel ran 2-3x slower inside the model than alone. So when the
//! process has GNU OpenMP loaded (torch's `libgomp`, or Intel's, which exports the same
//! entry point) the items run in an OpenMP parallel region of that runtime, on the same
//! team as torch's ops; otherwise (e.g. `cargo test`) on rayon's pool.

use std::ffi::{c_uint, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

type GompParallel = unsafe extern "C" fn(
    fn_: Option<unsafe extern "C" fn(*mut c_void)>,
    data: *mut c_void,
    num_threads: c_uint,
    flags: c_uint,
);

/// `GOMP_parallel` of the OpenMP runtime already loaded into the process, if any.
fn gomp_parallel() -> Option<GompParallel> {
    static FOUND: OnceLock<Option<GompParallel>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        if std::env::var_os("RSLLM_NO_OPENMP").is_some() {
            return None;
        }
        // SAFETY: dlsym with RTLD_DEFAULT only looks a symbol up; the symbol, when
        // present, is libgomp's `void GOMP_parallel(void (*)(void *), void *, unsigned,
        // unsigned)`, which is the type `GompParallel` spells.
        unsafe {
            let sym = libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr());
            (!sym.is_null()).then(|| std::mem::transmute::<*mut c_void, GompParallel>(sym))
        }
    })
}

/// Which runtime `for_each_item` uses in this process ("openmp" or "rayon").
pub fn runtime() -> &'static str {
    if gomp_parallel().is_some() {
        "openmp"
    } else {
        "rayon"
    }
}

/// Call `work(&mut state, i)` for every i in 0..n, spread over the team; each thread
/// makes one `S::default()` and takes items one at a time (dynamic balancing: items
/// differ in length). A panic in any item is re-raised on the caller's thread.
pub fn for_each_item<S, F>(n: usize, work: F)
where
    S: Default,
    F: Fn(&mut S, usize) + Sync,
{
    let next = AtomicUsize::new(0);
    let panic: Mutex<Option<Box<dyn std::any::Any + Send>>> = Mutex::new(None);
    let body = || {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut state = S::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                work(&mut state, i);
            }
        }));
        if let Err(payload) = result {
            // Stop the other threads from taking more items, and keep the first panic.
            next.store(n, Ordering::Relaxed);
            if let Ok(mut slot) = panic.lock() {
                slot.get_or_insert(payload);
            }
        }
    };
    match gomp_parallel() {
        Some(parallel) => run_openmp(parallel, &body),
        None => {
            rayon::broadcast(|_| body());
        }
    }
    if let Some(payload) = panic.into_inner().ok().flatten() {
        resume_unwind(payload);
    }
}

/// Call `work(&mut state, i, chunk)` for the i-th `chunk_len`-long chunk of `out` (the
/// last may be shorter): on the team when `parallel`, else in order on this thread.
/// The one place where the kernels' output is shared between threads.
pub fn for_each_chunk<S, E, F>(out: &mut [E], chunk_len: usize, parallel: bool, work: F)
where
    S: Default,
    E: Send,
    F: Fn(&mut S, usize, &mut [E]) + Sync,
{
    let chunk_len = chunk_len.max(1);
    if !parallel {
        let mut state = S::default();
        for (i, chunk) in out.chunks_mut(chunk_len).enumerate() {
            work(&mut state, i, chunk);
        }
        return;
    }
    let len = out.len();
    let base = SharedMut(out.as_mut_ptr());
    for_each_item(len.div_ceil(chunk_len), |state: &mut S, i| {
        let start = i * chunk_len;
        let end = (start + chunk_len).min(len);
        // SAFETY: `for_each_item` hands out each i once, and chunk i is [start, end)
        // within out: the slices are in bounds and disjoint while `out` is borrowed.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        work(state, i, chunk);
    });
}

/// A pointer to the output that the closure of `for_each_chunk` may share.
struct SharedMut<E>(*mut E);

impl<E> SharedMut<E> {
    // A method, so that closures capture the whole `Sync` wrapper, not the raw field.
    fn get(&self) -> *mut E {
        self.0
    }
}

// SAFETY: only used by `for_each_chunk`, which gives each thread disjoint chunks.
unsafe impl<E: Send> Sync for SharedMut<E> {}

/// Run `body` once on every thread of an OpenMP team (the caller's thread included).
fn run_openmp<B: Fn() + Sync>(parallel: GompParallel, body: &B) {
    unsafe extern "C" fn trampoline<B: Fn()>(data: *mut c_void) {
        // SAFETY: `data` is the `&B` handed to GOMP_parallel below, alive until it
        // returns; `body` catches every panic, so none unwinds into C.
        let body = unsafe { &*(data as *const B) };
        body();
    }
    // SAFETY: GOMP_parallel runs `trampoline` on each thread of the team and returns
    // after all of them have finished; 0 threads means the runtime's default (torch's
    // `set_num_threads`), flags 0 a plain region.
    unsafe { parallel(Some(trampoline::<B>), body as *const B as *mut c_void, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for_each_item(hits.len(), |count: &mut usize, i| {
            *count += 1;
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn chunks_cover_the_output_once_in_both_modes() {
        for parallel in [false, true] {
            let mut out = vec![0usize; 1003];
            for_each_chunk(
                &mut out,
                64,
                parallel,
                |_: &mut (), i, chunk: &mut [usize]| {
                    chunk.iter_mut().for_each(|x| *x += i + 1);
                },
            );
            assert!(
                out.iter().enumerate().all(|(j, &x)| x == j / 64 + 1),
                "{parallel}"
            );
        }
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let result = catch_unwind(|| for_each_item(100, |_: &mut (), i| assert!(i != 37)));
        assert!(result.is_err());
    }
}
