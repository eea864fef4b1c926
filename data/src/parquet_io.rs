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
        let dims = if rows > 0 { (nf.value(0) as usize, h.value(0) as usize, w.value(0) as usize) } else { (0, 0, 0) };
        let frame_bytes = dims.1 * dims.2 * 3;
        let mut out = vec![0u8; rows * dims.0 * frame_bytes];
        for r in 0..rows {
            if (nf.value(r) as usize, h.value(r) as usize, w.value(r) as usize) != dims {
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
