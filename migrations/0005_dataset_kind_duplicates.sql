-- store_dataset.kind held 15 characters, so 'prompt_completion' was stored as
-- 'prompt_completi'. duplicates: rows equal to an earlier row of the file,
-- counted at upload (datasets uploaded before this read 0).
UPDATE datasets SET kind = 'prompt_completion' WHERE kind = 'prompt_completi';
ALTER TABLE datasets ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
