//! The Arrow schema of the clips table (see `data/SCHEMA.md`), and its
//! validation on read: a file with a missing column or a column of another
//! type is an error naming the file and the column.

use crate::error::{DataError, Result};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::path::Path;
use std::sync::Arc;

/// Column names of the clips table.
pub mod col {
    pub const VIDEO_ID: &str = "video_id";
    pub const SPLIT: &str = "split";
    pub const FAMILY: &str = "family";
    pub const QUESTION: &str = "question";
    pub const ANSWER: &str = "answer";
    pub const FRAME_ENCODING: &str = "frame_encoding";
    pub const NUM_FRAMES: &str = "num_frames";
    pub const HEIGHT: &str = "height";
    pub const WIDTH: &str = "width";
    pub const CHANNELS: &str = "channels";
    pub const FRAMES: &str = "frames";
}

/// The element type of `frames`: one binary value per frame.
pub fn frames_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Binary, false)))
}

/// The clips table: one row per (clip, question).
pub fn clips_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::VIDEO_ID, DataType::Utf8, false),
        Field::new(col::SPLIT, DataType::Utf8, false),
        Field::new(col::FAMILY, DataType::Utf8, true),
        Field::new(col::QUESTION, DataType::Utf8, false),
        Field::new(col::ANSWER, DataType::Utf8, false),
        Field::new(col::FRAME_ENCODING, DataType::Utf8, false),
        Field::new(col::NUM_FRAMES, DataType::Int32, false),
        Field::new(col::HEIGHT, DataType::Int32, false),
        Field::new(col::WIDTH, DataType::Int32, false),
        Field::new(col::CHANNELS, DataType::Int32, false),
        Field::new(col::FRAMES, frames_type(), false),
    ]))
}

/// Checks that `schema` (read from `path`) has every column of `expected` with the same type
/// (nullability and extra columns are allowed).
pub fn check_columns(path: &Path, schema: &Schema, expected: &Schema) -> Result<()> {
    for f in expected.fields() {
        let Ok(have) = schema.field_with_name(f.name()) else {
            return Err(DataError::Schema { path: path.into(), column: f.name().clone(), detail: "missing".into() });
        };
        if !same_type(have.data_type(), f.data_type()) {
            return Err(DataError::Schema {
                path: path.into(),
                column: f.name().clone(),
                detail: format!("has type {}, expected {}", have.data_type(), f.data_type()),
            });
        }
    }
    Ok(())
}

/// Type equality that ignores list item names and nullability (other Arrow writers differ there).
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) | (DataType::LargeList(x), DataType::LargeList(y)) => {
            same_type(x.data_type(), y.data_type())
        }
        (DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8, DataType::Utf8) => true,
        (DataType::Binary | DataType::BinaryView | DataType::LargeBinary, DataType::Binary) => true,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_mistyped_column_is_named() {
        let mut fields: Vec<Field> = clips_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.retain(|f| f.name() != col::ANSWER);
        let e = check_columns(Path::new("x.parquet"), &Schema::new(fields.clone()), &clips_schema()).unwrap_err();
        assert!(e.to_string().contains("x.parquet") && e.to_string().contains("'answer'"), "{e}");
        fields.push(Field::new(col::ANSWER, DataType::Int64, false));
        let e = check_columns(Path::new("x.parquet"), &Schema::new(fields), &clips_schema()).unwrap_err();
        assert!(e.to_string().contains("Int64"), "{e}");
    }
}
