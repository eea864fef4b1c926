//! Keras argument types shared by the image layers: `(height, width)` pairs
//! that Keras accepts as an int or a pair, `padding`, and `data_format`.

use crate::error::{OpsError, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::autodiff::Padding;

/// A `(height, width)` argument (`kernel_size`, `strides`, `pool_size`, ...):
/// Keras accepts `3` or `[3, 3]`; it is written as `[3, 3]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair(pub usize, pub usize);

impl Pair {
    pub fn tuple(self) -> (usize, usize) {
        (self.0, self.1)
    }
}

impl From<usize> for Pair {
    fn from(v: usize) -> Self {
        Pair(v, v)
    }
}

impl From<(usize, usize)> for Pair {
    fn from((h, w): (usize, usize)) -> Self {
        Pair(h, w)
    }
}

impl Serialize for Pair {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        [self.0, self.1].serialize(s)
    }
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(usize),
            Two([usize; 2]),
        }
        Ok(match Either::deserialize(d)? {
            Either::One(v) => Pair(v, v),
            Either::Two([h, w]) => Pair(h, w),
        })
    }
}

pub(crate) fn one() -> Pair {
    Pair(1, 1)
}

pub(crate) fn valid() -> Padding {
    Padding::Valid
}

pub(crate) fn channels_last() -> String {
    "channels_last".into()
}

/// Only `channels_last` (NHWC) is implemented.
pub(crate) fn check_channels_last(class: &str, data_format: &str) -> Result<()> {
    if data_format != "channels_last" {
        return Err(OpsError::Config(format!(
            "{class}: data_format '{data_format}' is not supported (only 'channels_last', NHWC)"
        )));
    }
    Ok(())
}

/// Keras refuses strides > 1 together with dilation > 1; so do we.
pub(crate) fn check_strides_dilation(class: &str, strides: Pair, dilation: Pair) -> Result<()> {
    if (strides.0 > 1 || strides.1 > 1) && (dilation.0 > 1 || dilation.1 > 1) {
        return Err(OpsError::Config(format!(
            "{class}: strides {:?} > 1 and dilation_rate {:?} > 1 cannot be combined",
            strides.tuple(),
            dilation.tuple()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_reads_int_or_list_and_writes_list() {
        assert_eq!(serde_json::from_str::<Pair>("3").unwrap(), Pair(3, 3));
        assert_eq!(serde_json::from_str::<Pair>("[2, 1]").unwrap(), Pair(2, 1));
        assert_eq!(serde_json::to_string(&Pair(2, 1)).unwrap(), "[2,1]");
        assert!(serde_json::from_str::<Pair>("[1, 2, 3]").is_err());
    }
}
