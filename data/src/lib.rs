//! # kallista-data
//!
//! Dataset makers (the synthetic video-QA set), ingest of image folders and
//! video files into Parquet, tokenizer and vocabularies, and the documented
//! Arrow schemas (`SCHEMA.md`).
//!
//! Empty until the data issue; the layout is fixed by `DESIGN.md`.
