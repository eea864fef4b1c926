//! The CUDA slot. Without feature `cuda` every request is a typed
//! [`OpsError::NotCompiledWithCuda`]; the cudarc backend lands with the CUDA issue.

use super::Backend;
use crate::error::{OpsError, Result};
use std::sync::Arc;

pub(super) fn backend(_ordinal: usize) -> Result<Arc<dyn Backend>> {
    Err(OpsError::NotCompiledWithCuda)
}
