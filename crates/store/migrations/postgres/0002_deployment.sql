-- Facts about the deployment every node must agree on. `seed_fingerprint`: a
-- one-way derivation of the master seed (MasterSeed::derive), recorded by the
-- first node that opens the database, so a node started with another seed
-- (which would hash keys differently and mint unverifiable tokens) is refused.
CREATE TABLE deployment (
    name  TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);
