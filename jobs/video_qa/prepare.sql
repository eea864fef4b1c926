-- Prepares the video-QA clips (data/SCHEMA.md, "clips") for training:
-- writes the question and answer vocabularies to ${out} and defines the view
-- `prepared` (padded token ids, answer ids). The job runs it as its
-- `data.script` and stages each split straight from the view, so no
-- prepared copy of the frames is written. export.sql writes the splits as
-- Parquet directories instead:
--   kallista sql -f jobs/video_qa/prepare.sql -f jobs/video_qa/export.sql --set data=DIR --set out=DIR
-- `--! set` lines are defaults that --set overrides.
--! set question_len = 12
--! set vocab_size = 1000

CREATE EXTERNAL TABLE clips STORED AS PARQUET LOCATION '${data}/clips/';

-- Words of the train questions, by count (eval/test words never enter the vocabulary).
CREATE VIEW question_words AS
  SELECT token, COUNT(*) AS count
  FROM (SELECT unnest(kallista_tokenize(question)) AS token FROM clips WHERE split = 'train') words
  GROUP BY token;

-- <pad> = 0, <unk> = 1, then the vocab_size most frequent words (ties by spelling).
-- (The special rows come from VALUES: a FROM-less SELECT in a UNION with a table
-- scan never finishes on Ballista 55.)
CREATE VIEW question_vocab AS
  SELECT token, id, count
  FROM (VALUES ('<pad>', CAST(0 AS INT), CAST(0 AS BIGINT)), ('<unk>', CAST(1 AS INT), CAST(0 AS BIGINT))) AS special(token, id, count)
  UNION ALL
  SELECT token, CAST(ROW_NUMBER() OVER (ORDER BY count DESC, token) + 1 AS INT), count
  FROM (SELECT token, count FROM question_words ORDER BY count DESC, token LIMIT ${vocab_size}) top_words;

-- Answers by count, ids from 0 (the label space is every answer of the set).
CREATE VIEW answer_vocab AS
  SELECT answer, CAST(ROW_NUMBER() OVER (ORDER BY count DESC, answer) - 1 AS INT) AS id, count
  FROM (SELECT answer, COUNT(*) AS count FROM clips GROUP BY answer) answers;

-- The vocabularies are written first and read back as files: the prepared
-- splits then look tokens up in one small, settled table (computing the
-- vocabulary inside each split's query mis-planned the ordered array_agg
-- under a split filter on Ballista 55).
COPY (SELECT * FROM question_vocab ORDER BY id) TO '${out}/question_vocab.parquet' STORED AS PARQUET;
COPY (SELECT * FROM answer_vocab ORDER BY id) TO '${out}/answer_vocab.parquet' STORED AS PARQUET;
CREATE EXTERNAL TABLE question_vocab_file STORED AS PARQUET LOCATION '${out}/question_vocab.parquet';
CREATE EXTERNAL TABLE answer_vocab_file STORED AS PARQUET LOCATION '${out}/answer_vocab.parquet';

-- Both vocabularies are looked up as one-row arrays (cross joins): the clips
-- stream through unshuffled. A join on `answer` made Ballista hash-shuffle
-- and sort every clip, frames included, before writing it (twice the writes).
CREATE VIEW prepared AS
  SELECT c.video_id, c.split, c.family, c.question, c.answer,
         kallista_pad(kallista_lookup(kallista_tokenize(c.question), v.words), ${question_len}) AS question_ids,
         CAST(array_position(a.answers, c.answer) - 1 AS INT) AS answer_id,
         c.frame_encoding, c.num_frames, c.height, c.width, c.channels, c.frames
  FROM clips c
  CROSS JOIN (SELECT array_agg(token ORDER BY id) AS words FROM question_vocab_file) v
  CROSS JOIN (SELECT array_agg(answer ORDER BY id) AS answers FROM answer_vocab_file) a;
