-- API 2 invitations and their rendezvous conduit.

CREATE TYPE invitation_type AS ENUM ('USER', 'DEVICE');
CREATE TYPE invitation_deleted_reason AS ENUM ('FINISHED', 'CANCELLED', 'ROTTEN');
CREATE TYPE invitation_conduit_state AS ENUM (
    '1_WAIT_PEERS',
    '2_1_CLAIMER_HASHED_NONCE',
    '2_2_GREETER_NONCE',
    '2_3_CLAIMER_NONCE',
    '3_1_CLAIMER_TRUST',
    '3_2_GREETER_TRUST',
    '4_COMMUNICATE'
);


CREATE TABLE invitation (
    _id SERIAL PRIMARY KEY,
    organization INTEGER NOT NULL REFERENCES organization (_id),
    token UUID NOT NULL,
    type invitation_type NOT NULL,
    greeter INTEGER NOT NULL REFERENCES user_ (_id),
    -- USER invitations only
    claimer_email VARCHAR(255),
    created_on TIMESTAMPTZ NOT NULL,
    deleted_on TIMESTAMPTZ,
    deleted_reason invitation_deleted_reason,
    conduit_state invitation_conduit_state NOT NULL DEFAULT '1_WAIT_PEERS',
    -- NULL: slot absent; an empty bytea is a present payload
    conduit_greeter_payload BYTEA,
    conduit_claimer_payload BYTEA,
    UNIQUE (organization, token)
);
