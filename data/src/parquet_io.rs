//! Writing and reading the clips table as Parquet.
//!
//! [`ClipWriter`] buffers rows and writes a row group every
//! [`ROWS_PER_GROUP`] clips; [`ClipReader`] streams record batches, checks
//! the schema (naming the file and column) and decodes frames into `u8`
//! tensors, naming the file, row and column of any bad value.

use crate::error::{DataError, Result};
use crate::frames::{self, FrameEncoding};
use crate::schema::{self, col};
use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryArray, BinaryBuilder, Int32Array, Int32Builder, ListArray, ListBuilder,
    RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Clips per row group (and per record batch written).
pub const ROWS_PER_GROUP: usize = 64;

/// Writes clips to one Parquet file, atomically (temporary name, then rename).
pub struct ClipWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    frames: usize,
    height: usize,
    width: usize,
    encoding: FrameEncoding,
    video_id: StringBuilder,
    split: StringBuilder,
    family: StringBuilder,
    question: StringBuilder,
    answer: StringBuilder,
    frame_list: ListBuilder<BinaryBuilder>,
    rows: usize,
}

impl ClipWriter {
    pub fn create(path: &Path, frames: usize, height: usize, width: usize, encoding: FrameEncoding) -> Result<Self> {
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid")))
            .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema::clips_schema(), Some(props)).map_err(|e| DataError::parquet(path, e))?;
        Ok(ClipWriter {
            path: path.to_path_buf(),
            tmp,
            writer,
            frames,
            height,
            width,
            encoding,
            video_id: StringBuilder::new(),
            split: StringBuilder::new(),
            family: StringBuilder::new(),
            question: StringBuilder::new(),
            answer: StringBuilder::new(),
            frame_list: ListBuilder::new(BinaryBuilder::new()).with_field(Arc::new(Field::new(
                "item",
                DataType::Binary,
                false,
            ))),
            rows: 0,
        })
    }

    /// Adds one clip (its frames already encoded with the writer's encoding).
    pub fn push(
        &mut self,
        video_id: &str,
        split: &str,
        family: Option<&str>,
        question: &str,
        answer: &str,
        frames: Vec<Vec<u8>>,
    ) -> Result<()> {
        self.video_id.append_value(video_id);
        self.split.append_value(split);
        self.family.append_option(family);
        self.question.append_value(question);
        self.answer.append_value(answer);
        for f in frames {
            self.frame_list.values().append_value(f);
        }
        self.frame_list.append(true);
        self.rows += 1;
        if self.rows.is_multiple_of(ROWS_PER_GROUP) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let n = self.video_id.len();
        if n == 0 {
            return Ok(());
        }
        let int = |v: usize| -> ArrayRef {
            let mut b = Int32Builder::with_capacity(n);
            (0..n).for_each(|_| b.append_value(v as i32));
            Arc::new(b.finish())
        };
        let mut enc = StringBuilder::new();
        (0..n).for_each(|_| enc.append_value(self.encoding.name()));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.video_id.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.family.finish()),
            Arc::new(self.question.finish()),
            Arc::new(self.answer.finish()),
            Arc::new(enc.finish()),
            int(self.frames),
            int(self.height),
            int(self.width),
            int(3),
            Arc::new(self.frame_list.finish()),
        ];
        let batch =
            RecordBatch::try_new(schema::clips_schema(), columns).map_err(|e| DataError::parquet(&self.path, e))?;
        self.writer.write(&batch).map_err(|e| DataError::parquet(&self.path, e))
    }

    /// Finishes the file and moves it into place; returns the number of rows.
    pub fn finish(mut self) -> Result<usize> {
        self.flush()?;
        self.writer.close().map_err(|e| DataError::parquet(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| DataError::io(&self.path, e))?;
        Ok(self.rows)
    }
}

/// A decoded batch of clips.
#[derive(Clone, Debug)]
pub struct ClipBatch {
    pub video_ids: Vec<String>,
    pub splits: Vec<String>,
    pub questions: Vec<String>,
    pub answers: Vec<String>,
    /// `[rows, frames, height, width, 3]`, row-major.
    pub frames: Vec<u8>,
    pub shape: [usize; 5],
    /// Prepared tables only (`jobs/video_qa/prepare.sql`): `[rows, question_len]` token ids.
    pub question_ids: Option<(Vec<i32>, usize)>,
    /// Prepared tables only: the answer ids.
    pub answer_ids: Option<Vec<i32>>,
}

/// Streams the clips of one Parquet file as decoded batches.
pub struct ClipReader {
    path: PathBuf,
    inner: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    row: usize,
}

impl ClipReader {
    /// Opens `path` and checks its schema.
    pub fn open(path: &Path, batch_size: usize) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| DataError::parquet(path, e))?;
        schema::check_columns(path, builder.schema(), &schema::clips_schema())?;
        let inner = builder.with_batch_size(batch_size).build().map_err(|e| DataError::parquet(path, e))?;
        Ok(ClipReader { path: path.to_path_buf(), inner, row: 0 })
    }
}

/// The most frames a clip may have.
pub const MAX_FRAMES: usize = 4096;
/// The largest frame side, in pixels.
pub const MAX_SIDE: usize = 8192;
/// The most bytes one batch of clips may decode to.
pub const MAX_BATCH_BYTES: usize = 16 << 30;

/// Decodes record batches of the clips schema (or the prepared tables') to
/// [`ClipBatch`]es; errors name `path` and the row counted from `first_row`.
/// Only the frame columns are required; the string columns are read when present.
pub struct ClipDecoder<'a> {
    pub path: &'a Path,
    pub first_row: usize,
}

impl ClipDecoder<'_> {
    fn column<'a, T: 'static>(&self, batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
        batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or_else(|| DataError::Schema {
            path: self.path.to_path_buf(),
            column: name.into(),
            detail: "missing or of an unexpected type".into(),
        })
    }

    /// A column cast to `to` (other Arrow writers use view or large types), or a schema error naming it.
    fn cast_column(&self, batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef> {
        let c = batch.column_by_name(name).ok_or_else(|| DataError::Schema {
            path: self.path.to_path_buf(),
            column: name.into(),
            detail: "missing".into(),
        })?;
        arrow::compute::cast(c, to).map_err(|e| DataError::Schema {
            path: self.path.to_path_buf(),
            column: name.into(),
            detail: format!("has type {}, cannot be read as {to}: {e}", c.data_type()),
        })
    }

    pub fn decode(&self, batch: &RecordBatch) -> Result<ClipBatch> {
        // Optional here: the training operators pass only the columns they use.
        let strings = |name: &str| -> Result<Vec<String>> {
            if batch.column_by_name(name).is_none() {
                return Ok(vec![]);
            }
            let c = self.cast_column(batch, name, &DataType::Utf8)?;
            let a = c.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
            Ok((0..a.len()).map(|i| a.value(i).to_string()).collect())
        };
        let ints = |name: &str| -> Result<&Int32Array> { self.column(batch, name) };
        let (nf, h, w) = (ints(col::NUM_FRAMES)?, ints(col::HEIGHT)?, ints(col::WIDTH)?);
        let enc = self.cast_column(batch, col::FRAME_ENCODING, &DataType::Utf8)?;
        let enc = enc.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
        let frames = self.cast_column(batch, col::FRAMES, &schema::frames_type())?;
        let frames = frames.as_any().downcast_ref::<ListArray>().expect("cast to a list");
        let rows = batch.num_rows();
        let bad = |r: usize, column: &str, detail: String| DataError::BadValue {
            path: self.path.to_path_buf(),
            row: self.first_row + r,
            column: column.into(),
            detail,
        };
        let dims = if rows > 0 { (nf.value(0), h.value(0), w.value(0)) } else { (0, 0, 0) };
        // Checked before anything is allocated: the sizes come from the file.
        if dims.0 < 0 || dims.0 as usize > MAX_FRAMES || dims.1 < 0 || dims.2 < 0 {
            return Err(bad(
                0,
                col::NUM_FRAMES,
                format!("clip is {}x{}x{}: out of range (at most {MAX_FRAMES} frames)", dims.0, dims.1, dims.2),
            ));
        }
        if dims.1 as usize > MAX_SIDE || dims.2 as usize > MAX_SIDE {
            return Err(bad(
                0,
                col::HEIGHT,
                format!("frames of {}x{} exceed {MAX_SIDE} pixels a side", dims.1, dims.2),
            ));
        }
        let dims = (dims.0 as usize, dims.1 as usize, dims.2 as usize);
        let frame_bytes = dims.1 * dims.2 * 3;
        let total = rows.checked_mul(dims.0 * frame_bytes).filter(|&n| n <= MAX_BATCH_BYTES).ok_or_else(|| {
            bad(0, col::FRAMES, format!("{rows} clips of {dims:?} exceed {MAX_BATCH_BYTES} bytes decoded"))
        })?;
        let mut out = vec![0u8; total];
        for r in 0..rows {
            if (nf.value(r) as i64, h.value(r) as i64, w.value(r) as i64)
                != (dims.0 as i64, dims.1 as i64, dims.2 as i64)
            {
                return Err(bad(
                    r,
                    col::NUM_FRAMES,
                    format!("clip is {}x{}x{}, the batch's first clip {:?}", nf.value(r), h.value(r), w.value(r), dims),
                ));
            }
            let list = frames.value(r);
            let list = list
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| bad(r, col::FRAMES, "frames are not binary".into()))?;
            if list.len() != dims.0 {
                return Err(bad(r, col::FRAMES, format!("{} frames, num_frames says {}", list.len(), dims.0)));
            }
            for t in 0..dims.0 {
                let dst = &mut out[(r * dims.0 + t) * frame_bytes..(r * dims.0 + t + 1) * frame_bytes];
                frames::decode_into(list.value(t), enc.value(r), dims.1, dims.2, dst)
                    .map_err(|e| bad(r, col::FRAMES, format!("frame {t}: {e}")))?;
            }
        }
        let question_ids = match batch.column_by_name("question_ids") {
            None => None,
            Some(_) => {
                let target = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
                let q = self.cast_column(batch, "question_ids", &target)?;
                let q = q.as_any().downcast_ref::<ListArray>().expect("cast to a list");
                let len = if rows > 0 { q.value(0).len() } else { 0 };
                let mut ids = Vec::with_capacity(rows * len);
                for r in 0..rows {
                    let v = q.value(r);
                    let v = v.as_any().downcast_ref::<Int32Array>().expect("list of int32");
                    if v.len() != len {
                        return Err(bad(
                            r,
                            "question_ids",
                            format!("{} ids, the batch's first row has {len}", v.len()),
                        ));
                    }
                    ids.extend(v.values().iter());
                }
                Some((ids, len))
            }
        };
        let answer_ids = match batch.column_by_name("answer_id") {
            None => None,
            Some(_) => {
                let a = self.cast_column(batch, "answer_id", &DataType::Int32)?;
                Some(a.as_any().downcast_ref::<Int32Array>().expect("cast to int32").values().to_vec())
            }
        };
        Ok(ClipBatch {
            question_ids,
            answer_ids,
            video_ids: strings(col::VIDEO_ID)?,
            splits: strings(col::SPLIT)?,
            questions: strings(col::QUESTION)?,
            answers: strings(col::ANSWER)?,
            frames: out,
            shape: [rows, dims.0, dims.1, dims.2, 3],
        })
    }
}

impl Iterator for ClipReader {
    type Item = Result<ClipBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.inner.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(DataError::parquet(&self.path, e))),
        };
        let r = ClipDecoder { path: &self.path, first_row: self.row }.decode(&batch);
        self.row += batch.num_rows();
        Some(r)
    }
}

/// The Parquet files of a directory (or the file itself), sorted.
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DataError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::Schema;

    /// One clip whose size columns claim `frames` x `side` x `side`, with one 1-byte frame.
    fn claimed(frames: i32, side: i32) -> RecordBatch {
        let bytes = BinaryArray::from(vec![&b"x"[..]]);
        let field = Arc::new(Field::new_list_field(DataType::Binary, true));
        let list = ListArray::new(field, OffsetBuffer::from_lengths([1]), Arc::new(bytes), None);
        let schema = Schema::new(vec![
            Field::new(col::FRAMES, list.data_type().clone(), true),
            Field::new(col::FRAME_ENCODING, DataType::Utf8, true),
            Field::new(col::NUM_FRAMES, DataType::Int32, true),
            Field::new(col::HEIGHT, DataType::Int32, true),
            Field::new(col::WIDTH, DataType::Int32, true),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(list),
            Arc::new(StringArray::from(vec!["raw"])),
            Arc::new(Int32Array::from(vec![frames])),
            Arc::new(Int32Array::from(vec![side])),
            Arc::new(Int32Array::from(vec![side])),
        ];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    #[test]
    fn clip_sizes_from_the_file_are_checked_before_allocating() {
        let decoder = ClipDecoder { path: Path::new("clips.parquet"), first_row: 7 };
        for (frames, side, column) in [(-1, 8, "num_frames"), (1 << 30, 8, "num_frames"), (1, 1 << 20, "height")] {
            let e = decoder.decode(&claimed(frames, side)).unwrap_err().to_string();
            assert!(e.contains("clips.parquet: row 7") && e.contains(&format!("column '{column}'")), "{e}");
        }
        // In range, the frame's own size is what is wrong.
        let e = decoder.decode(&claimed(1, 8)).unwrap_err().to_string();
        assert!(e.contains("column 'frames'") && e.contains("frame 0"), "{e}");
    }
}
