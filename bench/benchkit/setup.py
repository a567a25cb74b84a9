"""Organizations, users and realms prepared before the load (from the main process)."""

from __future__ import annotations

import uuid

from benchkit.common import ADMINISTRATION_TOKEN
from parsec_server.api.addr import BackendAddr
from parsec_server.api.codec import ID
from parsec_server.api.ids import RealmRole, UserProfile
from parsec_server.client.device import LocalDevice
from parsec_server.client.organization import bootstrap_organization, create_organization
from parsec_server.client.realm import create_realm, share
from parsec_server.client.user import create_user


async def setup_organization(addr: BackendAddr) -> LocalDevice:
    """A new organization (unique id), bootstrapped: its first device (an ADMIN)."""
    organization_id = f"Bench{uuid.uuid4().hex[:12]}"
    token = await create_organization(addr, ADMINISTRATION_TOKEN, organization_id)
    return await bootstrap_organization(
        addr, organization_id, token, human_handle=("a@x.com", "A"), device_label="d"
    )


async def setup_shared_realm(addr: BackendAddr) -> tuple[LocalDevice, LocalDevice, ID]:
    """A new organization with two users, alice (ADMIN) and bob (STANDARD), and a realm
    created by alice and shared with bob as CONTRIBUTOR: (alice, bob, realm_id)."""
    alice = await setup_organization(addr)
    async with await alice.connect() as conn:
        bob = await create_user(
            conn, alice, "bob", "laptop", ("b@x.com", "B"), UserProfile.STANDARD, "l"
        )
        realm_id = await create_realm(conn, alice)
        await share(conn, alice, realm_id, bob.user_id, RealmRole.CONTRIBUTOR)
    return alice, bob, realm_id
