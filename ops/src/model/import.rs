//! Weight import from PyTorch `state_dict`s saved as safetensors.
//!
//! PyTorch and Kallista (Keras) name and lay out the same weights
//! differently, so the import takes an explicit [`TorchMapping`]: one
//! [`TorchEntry`] per Kallista weight, naming the torch tensor(s) it comes
//! from and the [`TorchLayout`] conversion. The helpers build the usual
//! entries for one layer; the table is plain data, so a user whose module
//! names differ edits or extends it.
//!
//! | torch module | torch tensor | Kallista weight | conversion |
//! | --- | --- | --- | --- |
//! | `Conv2d` | `weight [out, in, kh, kw]` | `kernel [kh, kw, in, out]` | [`TorchLayout::Conv2dKernel`] |
//! | `Conv2d`, `Linear` | `bias [out]` | `bias [out]` | as is |
//! | `Linear` | `weight [out, in]` | `kernel [in, out]` | [`TorchLayout::Transpose`] |
//! | `BatchNorm2d` | `weight`, `bias`, `running_mean`, `running_var` | `gamma`, `beta`, `moving_mean`, `moving_variance` | as is |
//! | `Embedding` | `weight [V, d]` | `embeddings [V, d]` | as is |
//! | `LSTM` | `weight_ih_l0 [4u, in]`, `weight_hh_l0 [4u, u]` | `kernel [in, 4u]`, `recurrent_kernel [u, 4u]` | [`TorchLayout::Transpose`] |
//! | `LSTM` | `bias_ih_l0 + bias_hh_l0 [4u]` | `bias [4u]` | sum of the two |
//!
//! The LSTM gate order (i, f, g, o) is the same in both. Tensors that carry
//! no weight (`BatchNorm2d.num_batches_tracked`) are ignored by suffix.
//! Caveats the mapping cannot fix: torch's BatchNorm epsilon defaults to
//! 1e-5 and Keras's to 1e-3 (set the layer's epsilon), and torch's
//! symmetric `padding=` differs from Keras's 'same' with stride 2 (Keras pads
//! the extra row and column after).
//!
//! Every problem is collected before anything changes: torch tensors the
//! mapping names but the file lacks, tensors of the file nobody maps,
//! unsupported dtypes, shapes a conversion cannot take, and converted
//! shapes or keys that do not fit the model, all in one
//! [`OpsError::WeightMismatch`].

use super::Model;
use crate::error::{OpsError, Result};
use crate::tensor::Tensor;
use safetensors::tensor::Dtype;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How torch tensors become one Kallista weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchLayout {
    /// Same shape and element order.
    AsIs,
    /// A 2-D tensor transposed: `Linear.weight [out, in]` -> `kernel [in, out]`,
    /// `LSTM.weight_ih_l0 [4u, in]` -> `kernel [in, 4u]`.
    Transpose,
    /// `Conv2d.weight [out, in, kh, kw]` -> `kernel [kh, kw, in, out]`.
    Conv2dKernel,
    /// The element-wise sum of the sources, all of one shape (the two LSTM biases).
    Sum,
}

/// One Kallista weight and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchEntry {
    /// Torch `state_dict` names; one, except for [`TorchLayout::Sum`].
    pub torch: Vec<String>,
    /// The Kallista weight key, e.g. `td_cnn/frame_cnn/conv1/kernel`.
    pub key: String,
    pub layout: TorchLayout,
}

/// The table from torch names to Kallista keys (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchMapping {
    pub entries: Vec<TorchEntry>,
    /// Suffixes of torch names that carry no weight and are skipped.
    pub ignored_suffixes: Vec<String>,
}

impl Default for TorchMapping {
    fn default() -> Self {
        Self::new()
    }
}

impl TorchMapping {
    /// An empty table that ignores `num_batches_tracked`.
    pub fn new() -> Self {
        TorchMapping { entries: vec![], ignored_suffixes: vec!["num_batches_tracked".into()] }
    }

    /// Adds one entry: `torch` -> `key` with `layout`.
    pub fn entry(mut self, torch: &str, key: &str, layout: TorchLayout) -> Self {
        self.entries.push(TorchEntry { torch: vec![torch.into()], key: key.into(), layout });
        self
    }

    /// Adds `key` as the sum of several torch tensors.
    pub fn sum(mut self, torch: &[&str], key: &str) -> Self {
        let torch = torch.iter().map(|s| s.to_string()).collect();
        self.entries.push(TorchEntry { torch, key: key.into(), layout: TorchLayout::Sum });
        self
    }

    /// `nn.Conv2d` `module` -> Conv2D `layer` (kernel and, if `bias`, bias).
    /// `layer` is the Kallista layer path (`conv1`, `td_cnn/frame_cnn/conv1`).
    pub fn conv2d(self, module: &str, layer: &str, bias: bool) -> Self {
        let m = self.entry(&format!("{module}.weight"), &format!("{layer}/kernel"), TorchLayout::Conv2dKernel);
        if bias {
            m.entry(&format!("{module}.bias"), &format!("{layer}/bias"), TorchLayout::AsIs)
        } else {
            m
        }
    }

    /// `nn.Linear` `module` -> Dense `layer`.
    pub fn linear(self, module: &str, layer: &str, bias: bool) -> Self {
        let m = self.entry(&format!("{module}.weight"), &format!("{layer}/kernel"), TorchLayout::Transpose);
        if bias {
            m.entry(&format!("{module}.bias"), &format!("{layer}/bias"), TorchLayout::AsIs)
        } else {
            m
        }
    }

    /// `nn.BatchNorm2d` / `BatchNorm1d` `module` -> BatchNormalization `layer`
    /// with Keras's defaults `scale=True, center=True`. A Keras layer built
    /// with `scale=False` (InceptionV3's blocks) has no `gamma`: map the other
    /// three with [`TorchMapping::entry`], and only if the torch weight is all
    /// ones, since dropping any other value changes the output.
    pub fn batch_norm(self, module: &str, layer: &str) -> Self {
        [("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance")]
            .into_iter()
            .fold(self, |m, (t, k)| m.entry(&format!("{module}.{t}"), &format!("{layer}/{k}"), TorchLayout::AsIs))
    }

    /// `nn.Embedding` `module` -> Embedding `layer`.
    pub fn embedding(self, module: &str, layer: &str) -> Self {
        self.entry(&format!("{module}.weight"), &format!("{layer}/embeddings"), TorchLayout::AsIs)
    }

    /// One-layer `nn.LSTM` `module` -> LSTM `layer`; Keras's single bias is
    /// `bias_ih_l0 + bias_hh_l0`.
    pub fn lstm(self, module: &str, layer: &str) -> Self {
        self.entry(&format!("{module}.weight_ih_l0"), &format!("{layer}/kernel"), TorchLayout::Transpose)
            .entry(&format!("{module}.weight_hh_l0"), &format!("{layer}/recurrent_kernel"), TorchLayout::Transpose)
            .sum(&[&format!("{module}.bias_ih_l0"), &format!("{module}.bias_hh_l0")], &format!("{layer}/bias"))
    }

    fn ignored(&self, name: &str) -> bool {
        self.ignored_suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }

    /// Converts torch tensors to Kallista weights by key. Every problem is
    /// listed: missing or unmapped torch names, and shapes a layout cannot take.
    pub fn convert(&self, torch: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
        let mut problems = vec![];
        let mut used = BTreeSet::new();
        let mut out = BTreeMap::new();
        for e in &self.entries {
            let mut srcs = vec![];
            for name in &e.torch {
                used.insert(name.as_str());
                match torch.get(name) {
                    Some(t) => srcs.push(t),
                    None => problems.push(format!("missing torch tensor '{name}' (for '{}')", e.key)),
                }
            }
            if srcs.len() != e.torch.len() {
                continue;
            }
            if e.torch.is_empty() || (e.layout != TorchLayout::Sum && e.torch.len() != 1) {
                problems.push(format!(
                    "'{}': layout {:?} cannot take {} torch tensors",
                    e.key,
                    e.layout,
                    e.torch.len()
                ));
                continue;
            }
            match convert_one(e.layout, &srcs) {
                Ok(t) => {
                    if out.insert(e.key.clone(), t).is_some() {
                        problems.push(format!("'{}' is mapped more than once", e.key));
                    }
                }
                Err(detail) => problems.push(format!("'{}' from {:?}: {detail}", e.key, e.torch)),
            }
        }
        for name in torch.keys() {
            if !used.contains(name.as_str()) && !self.ignored(name) {
                problems.push(format!("unexpected torch tensor '{name}' (not in the mapping)"));
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(OpsError::WeightMismatch(problems))
        }
    }
}

/// One layout conversion; the error says which shape it could not take.
fn convert_one(layout: TorchLayout, srcs: &[&Tensor]) -> std::result::Result<Tensor, String> {
    let t = srcs[0];
    let s = t.shape();
    let fail = |what: &str| format!("expected {what}, torch has {s:?}");
    match layout {
        TorchLayout::AsIs => Ok(t.clone()),
        TorchLayout::Transpose => {
            let [r, c] = s else { return Err(fail("a 2-D tensor")) };
            let (r, c) = (*r, *c);
            let d = t.data();
            let data = (0..c).flat_map(|j| (0..r).map(move |i| d[i * c + j])).collect();
            Tensor::new(&[c, r], data).map_err(|e| e.to_string())
        }
        TorchLayout::Conv2dKernel => {
            let [o, i, kh, kw] = s else { return Err(fail("a 4-D [out, in, kh, kw] tensor")) };
            let (o, i, kh, kw) = (*o, *i, *kh, *kw);
            let d = t.data();
            let mut data = Vec::with_capacity(d.len());
            for y in 0..kh {
                for x in 0..kw {
                    for ci in 0..i {
                        for co in 0..o {
                            data.push(d[((co * i + ci) * kh + y) * kw + x]);
                        }
                    }
                }
            }
            Tensor::new(&[kh, kw, i, o], data).map_err(|e| e.to_string())
        }
        TorchLayout::Sum => {
            let mut acc = t.clone();
            for other in &srcs[1..] {
                if other.shape() != s {
                    return Err(format!("summed tensors differ in shape: {s:?} and {:?}", other.shape()));
                }
                acc.data_mut().iter_mut().zip(other.data()).for_each(|(a, b)| *a += b);
            }
            Ok(acc)
        }
    }
}

/// Reads a torch `state_dict` saved with `safetensors.torch.save_file`:
/// f32 tensors as they are, f64/f16/bf16 converted to f32. Integer tensors
/// (`num_batches_tracked`) are skipped when `mapping` ignores them, else
/// reported with every other problem.
pub fn read_torch_safetensors(path: &Path, mapping: &TorchMapping) -> Result<BTreeMap<String, Tensor>> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| OpsError::Io { path: p.clone(), source })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| OpsError::Safetensors { path: p.clone(), detail: e.to_string() })?;
    let mut out = BTreeMap::new();
    let mut problems = vec![];
    for (name, view) in st.tensors() {
        let d = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F64 => {
                d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
            }
            Dtype::BF16 => {
                d.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
            }
            Dtype::F16 => d.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            _ if mapping.ignored(&name) => continue,
            other => {
                problems.push(format!("{p}: torch tensor '{name}' is {other:?}, expected a float dtype"));
                continue;
            }
        };
        out.insert(name, Tensor::new(view.shape(), data)?);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(OpsError::WeightMismatch(problems))
    }
}

/// IEEE half to single precision (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m * 2^-24.
            let v = m as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

impl Model {
    /// Sets the weights from torch tensors through `mapping`. Nothing changes
    /// on error; the [`OpsError::WeightMismatch`] lists every problem of the
    /// mapping and of the model (weights no entry provides, keys the model
    /// lacks, shapes that differ after conversion).
    pub fn set_torch_weights(&mut self, torch: &BTreeMap<String, Tensor>, mapping: &TorchMapping) -> Result<()> {
        let (converted, mut problems) = match mapping.convert(torch) {
            Ok(c) => (c, vec![]),
            Err(OpsError::WeightMismatch(p)) => (BTreeMap::new(), p),
            Err(e) => return Err(e),
        };
        let provided: BTreeSet<&str> = mapping.entries.iter().map(|e| e.key.as_str()).collect();
        let expected = self.named_weights();
        for (key, w) in &expected {
            if !provided.contains(key.as_str()) {
                problems.push(format!("missing '{key}' (model expects {:?}; no mapping entry)", w.shape()));
            } else if let Some(t) = converted.get(key) {
                if t.shape() != w.shape() {
                    let e = mapping.entries.iter().find(|e| &e.key == key).expect("provided");
                    problems.push(format!(
                        "'{key}': from torch {:?} ({:?}) the shape is {:?}, model expects {:?}",
                        e.torch,
                        e.layout,
                        t.shape(),
                        w.shape()
                    ));
                }
            }
        }
        for key in &provided {
            if !expected.contains_key(*key) {
                problems.push(format!("mapping names '{key}', which the model does not have"));
            }
        }
        if !problems.is_empty() {
            return Err(OpsError::WeightMismatch(problems));
        }
        self.set_weights(&converted)
    }

    /// [`read_torch_safetensors`] then [`Model::set_torch_weights`].
    pub fn load_torch_weights(&mut self, path: impl AsRef<Path>, mapping: &TorchMapping) -> Result<()> {
        let torch = read_torch_safetensors(path.as_ref(), mapping)?;
        self.set_torch_weights(&torch, mapping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn conv_kernel_and_transpose_layouts() {
        // torch w[o][i][y][x] = ((o*2 + i)*2 + y)*3 + x for [2, 2, 2, 3].
        let k = convert_one(TorchLayout::Conv2dKernel, &[&t(&[2, 2, 2, 3])]).unwrap();
        assert_eq!(k.shape(), [2, 3, 2, 2]);
        // kernel[y=1][x=2][i=0][o=1] = torch[1][0][1][2] = ((1*2+0)*2+1)*3+2 = 17.
        assert_eq!(k.data()[((3 + 2) * 2) * 2 + 1], 17.0);
        let l = convert_one(TorchLayout::Transpose, &[&t(&[2, 3])]).unwrap();
        assert_eq!((l.shape(), l.data()), (&[3, 2][..], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0][..]));
        let s = convert_one(TorchLayout::Sum, &[&t(&[3]), &t(&[3])]).unwrap();
        assert_eq!(s.data(), [0.0, 2.0, 4.0]);
        assert!(convert_one(TorchLayout::Conv2dKernel, &[&t(&[2, 3])]).unwrap_err().contains("[2, 3]"));
    }

    #[test]
    fn every_problem_is_listed() {
        let m = TorchMapping::new().lstm("rnn", "q_lstm").batch_norm("bn", "bn").linear("fc", "fc", true);
        let mut torch = BTreeMap::new();
        for (k, s) in [
            ("rnn.weight_ih_l0", &[8, 3][..]),
            ("rnn.weight_hh_l0", &[8, 2]),
            ("rnn.bias_ih_l0", &[8]),
            ("bn.weight", &[4]),
            ("bn.bias", &[4]),
            ("bn.running_mean", &[4]),
            ("bn.running_var", &[4]),
            ("bn.num_batches_tracked", &[]),
            ("fc.weight", &[5]),
            ("fc.bias", &[5]),
            ("extra.weight", &[1]),
        ] {
            torch.insert(k.to_string(), t(s));
        }
        let Err(OpsError::WeightMismatch(p)) = m.convert(&torch) else { panic!("expected a mismatch") };
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("missing torch tensor 'rnn.bias_hh_l0'"), "{p:#?}");
        assert!(p[1].contains("fc/kernel") && p[1].contains("[5]"), "{p:#?}");
        assert!(p[2].contains("unexpected torch tensor 'extra.weight'"), "{p:#?}");
    }

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
