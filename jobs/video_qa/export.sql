-- Writes the view `prepared` of prepare.sql as one Parquet directory per
-- split under ${out}; run it after prepare.sql, in the same session:
--   kallista sql -f jobs/video_qa/prepare.sql -f jobs/video_qa/export.sql --set data=DIR --set out=DIR
COPY (SELECT * FROM prepared WHERE split = 'train') TO '${out}/train/' STORED AS PARQUET;
COPY (SELECT * FROM prepared WHERE split = 'eval') TO '${out}/eval/' STORED AS PARQUET;
COPY (SELECT * FROM prepared WHERE split = 'test') TO '${out}/test/' STORED AS PARQUET;
