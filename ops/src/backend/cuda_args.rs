//! The device addresses of one CUDA call's slices. A slice inside one of the
//! device's blocks (a [`crate::buf::Buf`] the backend allocated) is used in
//! place; any other slice (host memory) goes through a staging block, copied
//! up before the kernels and, for an output, back after them.

use super::cuda_memory::{DeviceMemory, ManagedBlock};
use crate::error::Result;
use std::sync::Arc;

/// `'a`: the outputs' borrow, which lasts until [`CallArgs::finish`] has copied back to them.
pub(super) struct CallArgs<'m, 'a> {
    memory: &'m Arc<DeviceMemory>,
    /// Staging and scratch blocks, kept until the call's work is queued.
    blocks: Vec<ManagedBlock>,
    /// (device, host, bytes) copies back to host outputs.
    write_back: Vec<(u64, u64, usize)>,
    /// An output is the device's own memory, updated in place by the kernels.
    in_place_output: bool,
    outputs: std::marker::PhantomData<&'a mut [u8]>,
}

impl<'m, 'a> CallArgs<'m, 'a> {
    pub fn new(memory: &'m Arc<DeviceMemory>) -> Self {
        CallArgs {
            memory,
            blocks: Vec::new(),
            write_back: Vec::new(),
            in_place_output: false,
            outputs: std::marker::PhantomData,
        }
    }

    /// The device address of an input slice.
    pub fn input<T: Copy>(&mut self, values: &[T]) -> Result<u64> {
        self.place(values.as_ptr() as u64, std::mem::size_of_val(values))
    }

    /// The device address of an output slice, which kernels may also read
    /// (accumulation, updates in place): a host one is copied up and back.
    pub fn output<T: Copy>(&mut self, values: &'a mut [T]) -> Result<u64> {
        let (host, bytes) = (values.as_mut_ptr() as u64, std::mem::size_of_val(values));
        let device = self.place(host, bytes)?;
        match device != host {
            true => self.write_back.push((device, host, bytes)),
            false => self.in_place_output |= bytes > 0,
        }
        Ok(device)
    }

    /// A device block of `len` uninitialised f32 values for this call only.
    pub fn scratch(&mut self, len: usize) -> Result<u64> {
        let block = self.memory.alloc(len)?;
        let ptr = block.ptr;
        self.blocks.push(block);
        Ok(ptr)
    }

    /// Queues the copies back to host outputs, and waits for the call's work
    /// when it has outputs: the caller may read an output slice as soon as
    /// the call returns, without going through a [`crate::buf::Buf`] (which
    /// would wait itself), as the sharded `sync` step reads the weights it
    /// has just updated.
    pub fn finish(self) -> Result<()> {
        for &(device, host, bytes) in &self.write_back {
            self.memory.copy(device, host, bytes)?;
        }
        if !self.write_back.is_empty() || self.in_place_output {
            self.memory.settle()?;
        }
        Ok(())
    }

    fn place(&mut self, ptr: u64, bytes: usize) -> Result<u64> {
        if bytes == 0 || self.memory.holds(ptr, bytes) {
            return Ok(if bytes == 0 { 0 } else { ptr });
        }
        let block = self.memory.alloc(bytes.div_ceil(4))?;
        self.memory.copy(ptr, block.ptr, bytes)?;
        // The caller may change or free its host memory once the call returns.
        self.memory.settle()?;
        let device = block.ptr;
        self.blocks.push(block);
        Ok(device)
    }
}
