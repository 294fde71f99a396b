-- Who wrote a run's commit and when, as its plan's checkout found it: the apply is
-- judged by the pool's initialization policy on the same commit without checking it out.
ALTER TABLE runs ADD COLUMN commit_author_name TEXT;
ALTER TABLE runs ADD COLUMN commit_author_email TEXT;
ALTER TABLE runs ADD COLUMN commit_authored_at BIGINT;
