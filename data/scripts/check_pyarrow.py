#!/usr/bin/env python3
"""Shows that Kallista's tables are plain Parquet for other Arrow tools.

    python data/scripts/check_pyarrow.py DATA_DIR [PREPARED_DIR]

Reads DATA_DIR/clips/ (and the prepared splits and vocabularies if given)
with pyarrow, checks the documented columns and types (data/SCHEMA.md), and
decodes the first clip's frames to a numpy array (raw frames directly, PNG and
JPEG through Pillow when it is installed). Exits non-zero on any mismatch.
"""
import io
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

CLIPS = {
    "video_id": pa.string(), "split": pa.string(), "family": pa.string(), "question": pa.string(),
    "answer": pa.string(), "frame_encoding": pa.string(), "num_frames": pa.int32(), "height": pa.int32(),
    "width": pa.int32(), "channels": pa.int32(),
}


def check_columns(table, expected, where):
    for name, typ in expected.items():
        assert name in table.column_names, f"{where}: missing column {name}"
        assert table.schema.field(name).type == typ, f"{where}: {name} is {table.schema.field(name).type}, expected {typ}"


def frames_of(row):
    h, w, enc = row["height"], row["width"], row["frame_encoding"]
    out = []
    for f in row["frames"]:
        if enc == "raw":
            out.append(np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3))
        else:
            from PIL import Image  # only needed for encoded frames
            out.append(np.asarray(Image.open(io.BytesIO(f)).convert("RGB")))
    return np.stack(out)


def main():
    clips = ds.dataset(f"{sys.argv[1]}/clips", format="parquet").to_table()
    check_columns(clips, CLIPS, "clips")
    assert pa.types.is_list(clips.schema.field("frames").type), "frames is a list"
    first = clips.slice(0, 1).to_pylist()[0]
    video = frames_of(first)
    assert video.shape == (first["num_frames"], first["height"], first["width"], 3), video.shape
    print(f"clips: {clips.num_rows} rows, first clip {video.shape} {video.dtype}, question {first['question']!r} -> {first['answer']!r}")
    if len(sys.argv) > 2:
        prep = sys.argv[2]
        for split in ("train", "eval", "test"):
            t = ds.dataset(f"{prep}/{split}", format="parquet").to_table(columns=["video_id", "question_ids", "answer_id"])
            assert pa.types.is_list(t.schema.field("question_ids").type)
            print(f"{split}: {t.num_rows} rows, first question_ids {t.column('question_ids')[0].as_py()}")
        for vocab in ("question_vocab", "answer_vocab"):
            t = ds.dataset(f"{prep}/{vocab}.parquet", format="parquet").to_table()
            print(f"{vocab}: {t.num_rows} entries, first {t.slice(0, 3).to_pylist()}")
    print("ok")


if __name__ == "__main__":
    main()
