-- Facts about the deployment every node must agree on. `seed_fingerprint`: a
-- one-way derivation of the master seed (MasterSeed::derive), recorded by the
-- first process that opens the database, so a node started with another seed
-- (which would hash keys differently and mint unverifiable tokens) is refused.
CREATE TABLE deployment (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
