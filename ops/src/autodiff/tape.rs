//! The tape: values in creation order, each with the rule that back-propagates
//! through the op that made it.

use crate::backend::{default_backend, Backend, MatMut, MatRef};
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// A handle to a value on a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// The backward rule of one op. Contract: `backward` adds the op's
/// contribution to the gradient of each input that `grads.wants`, given the
/// gradient `grad_out` of the op's output; it never overwrites other
/// contributions.
pub trait Backward: Send + Sync {
    /// Op name for error messages.
    fn name(&self) -> &'static str;
    /// The vars this op read.
    fn inputs(&self) -> Vec<Var>;
    /// Accumulates input gradients.
    fn backward(&self, tape: &Tape, out: Var, grad_out: &[f32], grads: &mut Gradients) -> Result<()>;
}

struct Node {
    value: Tensor,
    requires_grad: bool,
    rule: Option<Box<dyn Backward>>,
}

/// An eager autodiff tape.
pub struct Tape {
    nodes: Vec<Node>,
    backend: Arc<dyn Backend>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// A tape on the process's default backend (the CPU unless
    /// [`crate::backend::set_default_device`] chose another).
    pub fn new() -> Self {
        Tape { nodes: Vec::new(), backend: default_backend() }
    }

    /// A tape whose ops run on `backend`.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Self {
        Tape { nodes: Vec::new(), backend }
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// An empty tape on this tape's backend.
    pub fn empty_like(&self) -> Tape {
        Tape::with_backend(self.backend.clone())
    }

    /// A leaf; `requires_grad` makes [`Tape::backward`] return its gradient.
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.nodes.push(Node { value, requires_grad, rule: None });
        Var(self.nodes.len() - 1)
    }

    /// Records an op's output. It requires a gradient iff one of the rule's inputs does.
    pub fn push(&mut self, value: Tensor, rule: Box<dyn Backward>) -> Var {
        let requires_grad = rule.inputs().iter().any(|v| self.nodes[v.0].requires_grad);
        let rule = if requires_grad { Some(rule) } else { None };
        self.nodes.push(Node { value, requires_grad, rule });
        Var(self.nodes.len() - 1)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        self.nodes[v.0].value.shape()
    }

    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// Number of values recorded.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Back-propagates from `root` with seed gradient `seed` (same shape as `root`;
    /// for a scalar loss, `[1.0]`).
    pub fn backward_with(&self, root: Var, seed: Vec<f32>) -> Result<Gradients> {
        self.backward_into(root, seed, vec![])
    }

    /// [`Tape::backward_with`], adding into `start`'s buffers: each gives a
    /// leaf's gradient so far (of the leaf's size) and the rows it was
    /// written in, when known. Micro-batches summed this way need neither
    /// a zeroed buffer nor an addition pass per weight.
    pub fn backward_into(
        &self,
        root: Var,
        seed: Vec<f32>,
        start: Vec<(Var, Buf, Option<TouchedRows>)>,
    ) -> Result<Gradients> {
        let mut grads = Gradients {
            slots: vec![None; root.0 + 1],
            written: vec![Written::Nowhere; root.0 + 1],
            wants: self.nodes[..=root.0].iter().map(|n| n.requires_grad).collect(),
            backend: self.backend.clone(),
        };
        for (v, buf, rows) in start {
            let size = self.nodes.get(v.0).map(|n| n.value.len());
            if !grads.wants(v) || size != Some(buf.len()) || self.nodes[v.0].rule.is_some() {
                return Err(OpsError::Config(format!(
                    "backward_into: a start gradient of {} values for a value that is not a leaf of that size taking a gradient",
                    buf.len()
                )));
            }
            grads.written[v.0] = match rows {
                Some(r) => Written::Rows(r.width, r.rows),
                None => Written::Anywhere,
            };
            grads.slots[v.0] = Some(buf);
        }
        if !self.nodes[root.0].requires_grad {
            return Ok(grads);
        }
        grads.slots[root.0] = Some(self.backend.adopt(seed)?);
        for i in (0..=root.0).rev() {
            let Some(rule) = &self.nodes[i].rule else { continue };
            let Some(g) = grads.slots[i].take() else { continue };
            rule.backward(self, Var(i), &g, &mut grads)?;
            grads.slots[i] = Some(g);
        }
        Ok(grads)
    }

    /// Back-propagates from a scalar `root`.
    pub fn backward(&self, root: Var) -> Result<Gradients> {
        let n = self.value(root).len();
        self.backward_with(root, vec![1.0; n])
    }
}

/// The rows of width `width` where a gradient may be non-zero (sorted,
/// distinct): an Embedding's table gradient is zero outside the rows of the
/// step's tokens, which lets a reduction skip the rest without looking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TouchedRows {
    pub width: usize,
    pub rows: Vec<u32>,
}

impl TouchedRows {
    /// Rows `rows` (any order, repeats allowed) of width `width`.
    pub fn new(width: usize, mut rows: Vec<u32>) -> TouchedRows {
        rows.sort_unstable();
        rows.dedup();
        TouchedRows { width, rows }
    }

    /// The rows of `a` or `b` (`None` when their widths differ).
    pub fn union(a: &TouchedRows, b: &TouchedRows) -> Option<TouchedRows> {
        (a.width == b.width).then(|| TouchedRows::new(a.width, [a.rows.as_slice(), b.rows.as_slice()].concat()))
    }
}

/// What is known of where a gradient was written.
#[derive(Clone, Debug)]
enum Written {
    Nowhere,
    Rows(usize, Vec<u32>),
    Anywhere,
}

/// Gradients from one backward pass, indexed by [`Var`].
pub struct Gradients {
    slots: Vec<Option<Buf>>,
    /// Where each slot may be non-zero.
    written: Vec<Written>,
    wants: Vec<bool>,
    /// The tape's backend, which adds contributions up.
    backend: Arc<dyn Backend>,
}

impl Gradients {
    /// Whether `v` takes a gradient (it depends on a `requires_grad` leaf).
    pub fn wants(&self, v: Var) -> bool {
        self.wants.get(v.0).copied().unwrap_or(false)
    }

    /// The accumulator of `v`, zero-filled to `len` on first use; `None` if `v` needs no gradient.
    pub fn slot(&mut self, v: Var, len: usize) -> Result<Option<&mut [f32]>> {
        if !self.wants(v) {
            return Ok(None);
        }
        self.written[v.0] = Written::Anywhere;
        self.zeroed_slot(v, len)
    }

    fn zeroed_slot(&mut self, v: Var, len: usize) -> Result<Option<&mut [f32]>> {
        let slot = &mut self.slots[v.0];
        if slot.is_none() {
            *slot = Some(self.backend.zeros(len)?);
        }
        Ok(slot.as_mut().map(|s| s.as_mut_slice()))
    }

    /// [`Gradients::slot`] for a caller that adds only into rows `ids` of
    /// width `width` (an Embedding's scatter): they are remembered, so that
    /// [`Gradients::take_rows`] can say the rest is zero.
    pub fn slot_rows(&mut self, v: Var, len: usize, width: usize, ids: &[i32]) -> Result<Option<&mut [f32]>> {
        if !self.wants(v) {
            return Ok(None);
        }
        let written = std::mem::replace(&mut self.written[v.0], Written::Anywhere);
        self.written[v.0] = match written {
            Written::Nowhere if self.slots[v.0].is_none() => {
                Written::Rows(width, ids.iter().map(|&i| i as u32).collect())
            }
            Written::Rows(w, mut rows) if w == width => {
                rows.extend(ids.iter().map(|&i| i as u32));
                Written::Rows(w, rows)
            }
            _ => Written::Anywhere,
        };
        self.zeroed_slot(v, len)
    }

    /// Adds `g` into `v`'s gradient (moves it in when it is the first contribution).
    pub fn accumulate(&mut self, v: Var, g: Buf) -> Result<()> {
        if !self.wants(v) {
            return Ok(());
        }
        self.written[v.0] = Written::Anywhere;
        match &mut self.slots[v.0] {
            Some(s) => {
                let n = s.len();
                self.backend.copy(MatRef::dense(&g, 1, g.len()), MatMut::dense(s, 1, n), true)?;
            }
            slot @ None => *slot = Some(g),
        }
        Ok(())
    }

    /// The gradient of `v` (None if nothing flowed into it).
    pub fn get(&self, v: Var) -> Option<&[f32]> {
        self.slots.get(v.0).and_then(|s| s.as_deref())
    }

    /// Takes the gradient of `v` out of the store.
    pub fn take(&mut self, v: Var) -> Option<Buf> {
        self.slots.get_mut(v.0).and_then(|s| s.take())
    }

    /// The rows `v`'s gradient may be non-zero in, when only
    /// [`Gradients::slot_rows`] wrote it; `None` when it may be anywhere.
    pub fn take_rows(&mut self, v: Var) -> Option<TouchedRows> {
        match std::mem::replace(self.written.get_mut(v.0)?, Written::Anywhere) {
            Written::Rows(width, rows) => Some(TouchedRows::new(width, rows)),
            _ => None,
        }
    }
}
