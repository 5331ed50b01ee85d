-- Lists page in SQL (`ORDER BY seq LIMIT n`): an index on (kind, seq) lets a page of a kind's
-- objects stop after n rows instead of sorting all of them. Deleting an object deletes its
-- descendants by walking `parent`, which needs an index of its own.
CREATE INDEX objects_kind_seq ON objects (kind, seq);
CREATE INDEX objects_parent ON objects (parent);
