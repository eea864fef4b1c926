//! The CUDA slot: with feature `cuda`, the cudarc backend of a device ordinal
//! (opened once, then shared); without it, [`OpsError::NotCompiledWithCuda`].

use super::Backend;
#[cfg(not(feature = "cuda"))]
use crate::error::OpsError;
use crate::error::Result;
use std::sync::Arc;

#[cfg(feature = "cuda")]
pub(super) fn backend(ordinal: usize) -> Result<Arc<dyn Backend>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static OPENED: Mutex<Option<HashMap<usize, Arc<dyn Backend>>>> = Mutex::new(None);
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    let opened = opened.get_or_insert_with(HashMap::new);
    if let Some(backend) = opened.get(&ordinal) {
        return Ok(backend.clone());
    }
    let backend: Arc<dyn Backend> = Arc::new(super::cuda_backend::CudaBackend::open(ordinal)?);
    opened.insert(ordinal, backend.clone());
    Ok(backend)
}

#[cfg(not(feature = "cuda"))]
pub(super) fn backend(_ordinal: usize) -> Result<Arc<dyn Backend>> {
    Err(OpsError::NotCompiledWithCuda)
}
