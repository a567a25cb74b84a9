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
    -- USER invitations only; any string (not validated by the protocol)
    claimer_email TEXT,
    created_on TIMESTAMPTZ NOT NULL,
    deleted_on TIMESTAMPTZ,
    deleted_reason invitation_deleted_reason,
    conduit_state invitation_conduit_state NOT NULL DEFAULT '1_WAIT_PEERS',
    -- NULL: slot absent; an empty bytea is a present payload
    conduit_greeter_payload BYTEA,
    conduit_claimer_payload BYTEA,
    UNIQUE (organization, token),
    CHECK ((type = 'USER') = (claimer_email IS NOT NULL)),
    CHECK ((deleted_on IS NULL) = (deleted_reason IS NULL))
);

-- invite_new (reuse of an open invitation) and invite_list
CREATE INDEX invitation_open_by_greeter_idx ON invitation (greeter, type)
    WHERE deleted_on IS NULL;
