//! CUDA managed memory for [`Buf`]s: one address valid on the host and the
//! device, so a tensor the CUDA backend allocated is a plain slice to host
//! code and a kernel argument with no copy. Blocks are cached by size (a
//! training step allocates the same sizes every step; `cuMemAllocManaged` is
//! slow), and the device's one stream orders every kernel and copy.
//!
//! Host access waits for queued work: [`ManagedBlock::ptr`] (what a [`Buf`]
//! derefs through) synchronises the stream first when anything was queued
//! since the last wait, so the host never reads a value a kernel is writing.

use super::Device;
use crate::buf::{Buf, DeviceBlock};
use crate::error::{OpsError, Result};
use cudarc::driver::{result, sys, CudaContext, CudaStream};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the backend and every block it handed out share.
pub(super) struct DeviceMemory {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Work queued on the stream so far, and how much of it was waited for.
    queued: AtomicU64,
    settled: AtomicU64,
    cache: Mutex<Cache>,
}

/// Bytes of free blocks the cache keeps at most; a block freed beyond them
/// goes back to the driver (sizes that vary, such as a last short batch,
/// would otherwise pile up).
const CACHE_LIMIT: usize = 4 << 30;

#[derive(Default)]
struct Cache {
    /// Free blocks by size in bytes, and their total.
    free: HashMap<usize, Vec<u64>>,
    free_bytes: usize,
    /// Every block allocated, free or in use: address -> bytes.
    blocks: BTreeMap<u64, usize>,
}

impl DeviceMemory {
    pub fn new(ordinal: usize, ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Arc<Self> {
        let (queued, settled) = (AtomicU64::new(0), AtomicU64::new(0));
        Arc::new(DeviceMemory { ordinal, ctx, stream, queued, settled, cache: Mutex::default() })
    }

    pub fn error(&self, what: &str, detail: impl std::fmt::Display) -> OpsError {
        OpsError::Cuda { device: format!("cuda:{}", self.ordinal), detail: format!("{what}: {detail}") }
    }

    /// Makes the device's context current on this thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| self.error("bind the context", e))
    }

    /// Notes that work was queued on the stream.
    pub fn queued(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits for the queued work, if any.
    pub fn settle(&self) -> Result<()> {
        let queued = self.queued.load(Ordering::Acquire);
        if self.settled.load(Ordering::Acquire) >= queued {
            return Ok(());
        }
        self.bind()?;
        self.stream.synchronize().map_err(|e| self.error("synchronize", e))?;
        self.settled.fetch_max(queued, Ordering::AcqRel);
        Ok(())
    }

    /// A block of `len` f32 values (uninitialised), from the cache or the driver.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<ManagedBlock> {
        self.bind()?;
        let bytes = len * std::mem::size_of::<f32>();
        if bytes == 0 {
            return Ok(ManagedBlock { memory: self.clone(), ptr: 0, len: 0 });
        }
        let cached = {
            let mut cache = self.lock();
            let ptr = cache.free.get_mut(&bytes).and_then(Vec::pop);
            if ptr.is_some() {
                cache.free_bytes -= bytes;
            }
            ptr
        };
        let ptr = match cached {
            Some(ptr) => ptr,
            None => self.alloc_from_driver(bytes)?,
        };
        Ok(ManagedBlock { memory: self.clone(), ptr, len })
    }

    /// `len` zeros, set on the device.
    pub fn zeros(self: &Arc<Self>, len: usize) -> Result<ManagedBlock> {
        let block = self.alloc(len)?;
        if len > 0 {
            // SAFETY: the block holds `len` f32 values; the memset is ordered on the stream.
            unsafe { result::memset_d8_async(block.ptr, 0, len * 4, self.stream.cu_stream()) }
                .map_err(|e| self.error("set to zero", e))?;
            self.queued();
        }
        Ok(block)
    }

    /// A block holding a copy of `values` (on the host or on this device).
    pub fn copy_of(self: &Arc<Self>, values: &[f32]) -> Result<ManagedBlock> {
        let block = self.alloc(values.len())?;
        let (src, bytes) = (values.as_ptr() as u64, values.len() * 4);
        self.copy(src, block.ptr, bytes)?;
        if !self.holds(src, bytes) {
            // Host memory may change or be freed once this returns.
            self.settle()?;
        }
        Ok(block)
    }

    /// Queues a copy of `bytes` from `src` to `dst`, either of which may be
    /// host memory (unified addressing tells them apart).
    pub fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: callers pass live ranges of `bytes` bytes; the copy is ordered on the stream.
        unsafe { sys::cuMemcpyAsync(dst, src, bytes, self.stream.cu_stream()).result() }
            .map_err(|e| self.error("copy", e))?;
        self.queued();
        Ok(())
    }

    /// Whether `[ptr, ptr + bytes)` lies inside one of this device's blocks.
    pub fn holds(&self, ptr: u64, bytes: usize) -> bool {
        let cache = self.lock();
        let found = cache.blocks.range(..=ptr).next_back();
        found.is_some_and(|(&start, &size)| ptr + bytes as u64 <= start + size as u64)
    }

    fn alloc_from_driver(&self, bytes: usize) -> Result<u64> {
        let attach = sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL;
        // SAFETY: a plain allocation; its contents are set before they are read.
        let ptr = match unsafe { result::malloc_managed(bytes, attach) } {
            Ok(ptr) => ptr,
            Err(_) => {
                // Out of memory, perhaps only because of the cache: free it and try once more.
                self.release_cache()?;
                unsafe { result::malloc_managed(bytes, attach) }
                    .map_err(|e| self.error(&format!("allocate {bytes} bytes of managed memory"), e))?
            }
        };
        self.lock().blocks.insert(ptr, bytes);
        Ok(ptr)
    }

    fn release_cache(&self) -> Result<()> {
        self.settle()?;
        let mut cache = self.lock();
        let free: Vec<u64> = cache.free.drain().flat_map(|(_, ptrs)| ptrs).collect();
        cache.free_bytes = 0;
        for ptr in free {
            cache.blocks.remove(&ptr);
            // SAFETY: a free block of this cache, no longer used by any queued work (settled above).
            unsafe { result::free_sync(ptr) }.map_err(|e| self.error("free", e))?;
        }
        Ok(())
    }

    fn release(&self, ptr: u64, bytes: usize) {
        let mut cache = self.lock();
        if cache.free_bytes + bytes <= CACHE_LIMIT {
            // Later work on the stream may reuse it at once (stream order); the host only after a settle.
            cache.free.entry(bytes).or_default().push(ptr);
            cache.free_bytes += bytes;
            return;
        }
        cache.blocks.remove(&ptr);
        drop(cache);
        // A failure here leaks the block: a drop cannot report it, and the next call will.
        if self.settle().is_ok() {
            // SAFETY: no queued work uses the block any more (settled), and no block refers to it.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `len` f32 values of managed memory; dropping it returns it to the cache.
pub(super) struct ManagedBlock {
    memory: Arc<DeviceMemory>,
    pub ptr: u64,
    len: usize,
}

impl ManagedBlock {
    pub fn into_buf(self) -> Buf {
        Buf::on_device(Box::new(self))
    }
}

impl std::fmt::Debug for ManagedBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagedBlock({} values on cuda:{})", self.len, self.memory.ordinal)
    }
}

// SAFETY: a block owns its `len` values (from the cache, never shared), and `ptr` settles
// the stream, the one place device work on them is queued, before handing them out.
unsafe impl DeviceBlock for ManagedBlock {
    /// Waits for queued work first: the host is about to read or write.
    fn ptr(&self) -> *mut f32 {
        // A failed wait means a failed device, which the next backend call reports.
        let _ = self.memory.settle();
        self.ptr as *mut f32
    }

    fn value_count(&self) -> usize {
        self.len
    }

    fn device(&self) -> Device {
        Device::Cuda(self.memory.ordinal)
    }

    /// Panics only when the device is out of memory, as a `Vec` would abort.
    fn duplicate(&self) -> Box<dyn DeviceBlock> {
        let copy = self.memory.alloc(self.len).expect("device memory for a copy of a tensor");
        self.memory.copy(self.ptr, copy.ptr, self.len * 4).expect("a device copy of a tensor");
        Box::new(copy)
    }
}

impl Drop for ManagedBlock {
    fn drop(&mut self) {
        if self.len > 0 {
            self.memory.release(self.ptr, self.len * 4);
        }
    }
}
