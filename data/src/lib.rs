//! # kallista-data
//!
//! Brief overview: [`video_qa::make_video_qa`] renders the synthetic
//! video-QA set; [`ingest::ingest_frames`] turns published-style frame
//! folders plus annotations into the same table; [`schema`] defines the
//! clips table (documented in `data/SCHEMA.md`) and checks it on read;
//! [`parquet_io`] writes it and reads it back as decoded `u8` frame tensors;
//! [`tokenizer`] is the question tokenizer that SQL also uses;
//! [`columns`] decodes any table column into a model input's values.

pub mod binding;
pub mod columns;
pub mod error;
pub mod frames;
pub mod image_file;
pub mod ingest;
pub mod parquet_io;
pub mod schema;
pub mod tokenizer;
pub mod video_qa;

pub use error::{DataError, Result};
