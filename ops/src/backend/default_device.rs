//! The process's default backend: what a new [`crate::autodiff::Tape`] runs on.
//!
//! A worker is placed on one device for its whole life (`kallista executor
//! --device`, a job's `device:`), so the choice is process-wide and made once
//! at start, where a bad choice can still be a clear error.

use super::{backend_for, cpu_backend, Backend, Device};
use crate::error::Result;
use std::sync::{Arc, RwLock};

static DEFAULT: RwLock<Option<Arc<dyn Backend>>> = RwLock::new(None);

/// Makes `device` the default for new tapes; an unavailable device is a typed
/// error and leaves the default as it was.
pub fn set_default_device(device: Device) -> Result<()> {
    let backend = backend_for(device)?;
    *DEFAULT.write().unwrap_or_else(|e| e.into_inner()) = Some(backend);
    Ok(())
}

/// The backend new tapes use: the CPU unless [`set_default_device`] chose another.
pub fn default_backend() -> Arc<dyn Backend> {
    DEFAULT.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(cpu_backend)
}
