-- The reference social app's schema. Every table has a monotonically increasing id, so that
-- integrity checks can compare "the rows up to id N" between a source and a restored copy.
CREATE SCHEMA IF NOT EXISTS failover;
-- The fencing token: raised by every failover; the app writes only while its epoch matches.
CREATE TABLE IF NOT EXISTS failover.epoch (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch bigint NOT NULL,
    site text NOT NULL,
    raised_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    bio text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS posts (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users,
    body text NOT NULL,
    media_key text,
    canary_seq bigint UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS follows (
    id bigserial PRIMARY KEY,
    follower bigint NOT NULL REFERENCES users,
    followee bigint NOT NULL REFERENCES users
);
CREATE TABLE IF NOT EXISTS media (
    id bigserial PRIMARY KEY,
    key text UNIQUE NOT NULL,
    bytes bigint NOT NULL,
    sha256 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
