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

/// The builder methods and window options shared by the convolution layers,
/// whose configs carry the same Keras fields (`strides`, `padding`,
/// `dilation_rate`, `activation`, `use_bias`) and a `base: LayerBase`.
macro_rules! conv_builder_methods {
    () => {
        pub fn strides(mut self, strides: impl Into<$crate::layers::args::Pair>) -> Self {
            self.cfg.strides = strides.into();
            self
        }

        pub fn padding(mut self, padding: $crate::layers::args::Padding) -> Self {
            self.cfg.padding = padding;
            self
        }

        pub fn dilation_rate(mut self, dilation: impl Into<$crate::layers::args::Pair>) -> Self {
            self.cfg.dilation_rate = dilation.into();
            self
        }

        /// Sets the activation by Keras name; an unknown name fails at build.
        pub fn activation(mut self, name: &str) -> Self {
            self.cfg.activation = name.to_string();
            self
        }

        pub fn use_bias(mut self, use_bias: bool) -> Self {
            self.cfg.use_bias = use_bias;
            self
        }

        pub fn name(mut self, name: &str) -> Self {
            self.base.name = name.into();
            self
        }

        fn options(&self) -> $crate::autodiff::Conv2dOptions {
            $crate::autodiff::Conv2dOptions {
                strides: self.cfg.strides.tuple(),
                dilation: self.cfg.dilation_rate.tuple(),
                padding: self.cfg.padding,
            }
        }
    };
}
pub(crate) use conv_builder_methods;

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
