"""Users, devices and humans: creation, revocation, lookup, search."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum, auto

from parsec_server.api.certificates import (
    CertificateError,
    DeviceCertificate,
    RevokedUserCertificate,
    UserCertificate,
    is_redacted_copy_of,
    verify_and_load,
)
from parsec_server.api.codec import DateTime
from parsec_server.api.ids import UserProfile, format_human_handle, user_id_of
from parsec_server.api.protocol.base import OK, Rep, error, ok
from parsec_server.api.protocol.user import (
    APIV1DeviceCreateReq,
    APIV1UserCreateReq,
    APIV1UserFindReq,
    DeviceCreateReq,
    HumanFindReq,
    UserCreateReq,
    UserGetReq,
    UserRevokeReq,
)
from parsec_server.backend.audit import OK as AUDIT_OK
from parsec_server.backend.audit import STREAM_ONLY, Action, Actor, AuditLog, Target
from parsec_server.backend.ballpark import timestamps_in_the_ballpark
from parsec_server.backend.client_context import AuthenticatedClientContext
from parsec_server.backend.events import (
    DeviceCreatedEvent,
    EventBus,
    UserCreatedEvent,
    UserFrozenEvent,
    UserRevokedEvent,
)
from parsec_server.backend.organization import Organization, OrganizationSettings
from parsec_server.backend.user_types import (
    Device,
    HumanFindResult,
    Trustchain,
    User,
    UserSummary,
    UserWithTrustchain,
)


class UserCreateBadOutcome(Enum):
    USER_ALREADY_EXISTS = auto()
    HUMAN_HANDLE_ALREADY_TAKEN = auto()
    # The organization's settings (administration API)
    ACTIVE_USERS_LIMIT_REACHED = auto()
    OUTSIDER_NOT_ALLOWED = auto()


class UserFreezeBadOutcome(Enum):
    ORGANIZATION_NOT_FOUND = auto()
    USER_NOT_FOUND = auto()


def creation_refused(
    settings: OrganizationSettings, profile: UserProfile, active_users: int
) -> UserCreateBadOutcome | None:
    """The organization's settings applied to a new user, given how many users are active
    (neither revoked nor frozen). Both storages call it within their creation."""
    if profile is UserProfile.OUTSIDER and not settings.user_profile_outsider_allowed:
        return UserCreateBadOutcome.OUTSIDER_NOT_ALLOWED
    limit = settings.active_users_limit
    if limit is not None and active_users >= limit:
        return UserCreateBadOutcome.ACTIVE_USERS_LIMIT_REACHED
    return None


class DeviceCreateBadOutcome(Enum):
    ALREADY_EXISTS = auto()


class UserRevokeBadOutcome(Enum):
    NOT_FOUND = auto()
    ALREADY_REVOKED = auto()


@dataclass(frozen=True, slots=True)
class CertifiedDevice:
    """What the trustchain walk needs about one device and its user."""

    device_certificate: bytes
    redacted_device_certificate: bytes
    device_certifier: str | None
    user_certificate: bytes
    redacted_user_certificate: bytes
    user_certifier: str | None
    revoked_user_certificate: bytes | None
    revoked_user_certifier: str | None


DeviceFetcher = Callable[[set[str]], Awaitable[dict[str, CertifiedDevice]]]


async def walk_trustchain(
    start: Iterable[str | None], fetch: DeviceFetcher, redacted: bool
) -> Trustchain:
    """Collect the certificates needed to verify back to the root key, breadth first.
    `fetch` loads a batch of devices (one storage round trip per level of the chain)."""
    devices: dict[str, bytes] = {}
    users: dict[str, bytes] = {}
    revoked: dict[str, bytes] = {}
    visited: set[str] = set()
    todo = {d for d in start if d is not None}
    while todo:
        visited |= todo
        found = await fetch(todo)
        todo = set()
        for device_id, cd in found.items():
            user_id = user_id_of(device_id)
            devices[device_id] = (
                cd.redacted_device_certificate if redacted else cd.device_certificate
            )
            users[user_id] = cd.redacted_user_certificate if redacted else cd.user_certificate
            if cd.revoked_user_certificate is not None:
                revoked[user_id] = cd.revoked_user_certificate
            for nxt in (cd.device_certifier, cd.user_certifier, cd.revoked_user_certifier):
                if nxt is not None and nxt not in visited:
                    todo.add(nxt)
    return Trustchain(
        devices=list(devices.values()),
        users=list(users.values()),
        revoked_users=list(revoked.values()),
    )


@dataclass(frozen=True, slots=True)
class HumanCandidate:
    user_id: str
    human_handle: tuple[str, str] | None
    revoked_on: DateTime | None


def find_humans(
    candidates: Iterable[HumanCandidate],
    query: str | None,
    omit_revoked: bool,
    omit_non_human: bool,
    page: int,
    per_page: int,
    now: DateTime,
) -> tuple[list[HumanFindResult], int]:
    """human_find's matching and ordering, shared by both storages: every whitespace
    separated term of the query must prefix a word of the label, the email or the user id
    (case-insensitive)."""
    terms = query.lower().split() if query else []
    humans: list[tuple[tuple[str, str], HumanFindResult]] = []
    non_humans: list[tuple[tuple[str, str], HumanFindResult]] = []
    for c in candidates:
        revoked = c.revoked_on is not None and c.revoked_on <= now
        if revoked and omit_revoked:
            continue
        if c.human_handle is None and omit_non_human:
            continue
        words = [c.user_id.lower()]
        if c.human_handle is not None:
            email, label = c.human_handle
            words += [email.lower(), *label.lower().split()]
        if not all(any(w.startswith(t) for w in words) for t in terms):
            continue
        result = HumanFindResult(user_id=c.user_id, human_handle=c.human_handle, revoked=revoked)
        if c.human_handle is None:
            non_humans.append((("", c.user_id.lower()), result))
        else:
            humans.append(((c.human_handle[1].lower(), c.user_id.lower()), result))
    humans.sort(key=lambda x: x[0])
    non_humans.sort(key=lambda x: x[0])
    ordered = [r for _, r in humans] + [r for _, r in non_humans]
    start = (page - 1) * per_page
    return ordered[start : start + per_page], len(ordered)


def _invalid_certification(detail: str) -> Rep:
    return error("invalid_certification", f"Invalid certification data ({detail}).")


def require_admin(client: AuthenticatedClientContext) -> Rep | None:
    """Precheck of admin-only commands (run before request validation, as the reference)."""
    if client.profile is not UserProfile.ADMIN:
        return error("not_allowed", f"User `{client.user_id}` is not admin")
    return None


def refuse_outsider(client: AuthenticatedClientContext) -> Rep | None:
    """Precheck of the search commands (run before request validation)."""
    if client.profile is UserProfile.OUTSIDER:
        return error("not_allowed", "Not allowed for user with OUTSIDER profile.")
    return None


class BaseUserComponent(ABC):
    def __init__(self, event_bus: EventBus, audit: AuditLog = STREAM_ONLY) -> None:
        self._event_bus = event_bus
        self._audit = audit

    # Storage

    @abstractmethod
    async def get_identity(
        self, organization_id: str, device_id: str
    ) -> tuple[Organization, User, Device] | None:
        """The handshake's lookup: organization, user and device in one go."""

    @abstractmethod
    async def create_user(
        self, organization_id: str, user: User, first_device: Device
    ) -> UserCreateBadOutcome | None: ...

    @abstractmethod
    async def create_device(
        self, organization_id: str, device: Device
    ) -> DeviceCreateBadOutcome | None: ...

    @abstractmethod
    async def get_user_with_trustchain(
        self, organization_id: str, user_id: str, redacted: bool
    ) -> UserWithTrustchain | None: ...

    @abstractmethod
    async def certified_devices(
        self, organization_id: str, device_ids: set[str]
    ) -> dict[str, CertifiedDevice]:
        """The given devices (unknown ones left out) with their users' certificates."""

    async def get_device_with_trustchain(
        self, organization_id: str, device_id: str
    ) -> tuple[bytes, bytes, Trustchain] | None:
        """(user certificate, device certificate, trustchain), full versions: what an API 1
        claimer needs to verify the device that invited it."""
        found = (await self.certified_devices(organization_id, {device_id})).get(device_id)
        if found is None:
            return None
        trustchain = await walk_trustchain(
            [found.user_certifier, found.revoked_user_certifier, found.device_certifier],
            lambda ids: self.certified_devices(organization_id, ids),
            redacted=False,
        )
        return found.user_certificate, found.device_certificate, trustchain

    @abstractmethod
    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: DateTime,
    ) -> UserRevokeBadOutcome | None: ...

    @abstractmethod
    async def human_candidates(self, organization_id: str) -> list[HumanCandidate]:
        """Every user of the organization, for human_find/user_find."""

    @abstractmethod
    async def list_users(self, organization_id: str) -> list[UserSummary] | None:
        """Every user of the organization in id order; None if it does not exist."""

    @abstractmethod
    async def set_frozen(
        self, organization_id: str, user_id: str | None, email: str | None, frozen: bool
    ) -> UserSummary | UserFreezeBadOutcome:
        """Freeze or unfreeze the user of that id, or the non-revoked user of that email."""

    # Administration (REST API)

    async def freeze_user(
        self,
        actor: Actor,
        organization_id: str,
        user_id: str | None,
        email: str | None,
        frozen: bool,
    ) -> UserSummary | UserFreezeBadOutcome:
        """Frozen: refused at the handshake, and its connections closed on every server
        process (the `user.frozen` event, as a revocation)."""
        outcome = await self.set_frozen(organization_id, user_id, email, frozen)
        # The user by its id: found by e-mail, the id is known; else `by_email` only says
        # that it was looked up by e-mail (never the address).
        found = outcome.user_id if isinstance(outcome, UserSummary) else user_id
        self._audit.record(
            Action.USER_FREEZE if frozen else Action.USER_UNFREEZE,
            actor,
            Target(organization=organization_id, user=found),
            outcome.name.lower() if isinstance(outcome, UserFreezeBadOutcome) else AUDIT_OK,
            by_email=email is not None,
        )
        if frozen and isinstance(outcome, UserSummary):
            await self._event_bus.send(
                UserFrozenEvent(organization_id=organization_id, user_id=outcome.user_id)
            )
        return outcome

    # Commands

    async def api_user_get(self, client: AuthenticatedClientContext, req: UserGetReq) -> Rep:
        found = await self.get_user_with_trustchain(
            client.organization_id, req.user_id, redacted=client.profile is UserProfile.OUTSIDER
        )
        if found is None:
            return error("not_found")
        return ok(
            user_certificate=found.user_certificate,
            revoked_user_certificate=found.revoked_user_certificate,
            device_certificates=found.device_certificates,
            trustchain={
                "devices": found.trustchain.devices,
                "users": found.trustchain.users,
                "revoked_users": found.trustchain.revoked_users,
            },
        )

    async def api_user_create(self, client: AuthenticatedClientContext, req: UserCreateReq) -> Rep:
        return await self._create_user(
            client,
            req.user_certificate,
            req.device_certificate,
            req.redacted_user_certificate,
            req.redacted_device_certificate,
        )

    async def apiv1_user_create(
        self, client: AuthenticatedClientContext, req: APIV1UserCreateReq
    ) -> Rep:
        return await self._create_user(
            client,
            req.user_certificate,
            req.device_certificate,
            req.user_certificate,
            req.device_certificate,
        )

    async def _create_user(
        self,
        client: AuthenticatedClientContext,
        user_certificate: bytes,
        device_certificate: bytes,
        redacted_user_certificate: bytes,
        redacted_device_certificate: bytes,
    ) -> Rep:
        key, author = client.verify_key, client.device_id
        try:
            d_cert = verify_and_load(DeviceCertificate, device_certificate, key, author)
            u_cert = verify_and_load(UserCertificate, user_certificate, key, author)
            ru_cert = verify_and_load(UserCertificate, redacted_user_certificate, key, author)
            rd_cert = verify_and_load(DeviceCertificate, redacted_device_certificate, key, author)
        except CertificateError as exc:
            return _invalid_certification(str(exc))
        if u_cert.timestamp != d_cert.timestamp:
            return error(
                "invalid_data", "Device and User certificates must have the same timestamp."
            )
        if not timestamps_in_the_ballpark(u_cert.timestamp, DateTime.now()):
            return error("invalid_certification", "Invalid timestamp in certificate.")
        if user_id_of(d_cert.device_id) != u_cert.user_id:
            return error("invalid_data", "Device and User must have the same user ID.")
        if not is_redacted_copy_of(u_cert, ru_cert, "human_handle"):
            return error("invalid_data", "Redacted User certificate differs from User certificate.")
        if ru_cert.human_handle is not None:
            return error(
                "invalid_data", "Redacted User certificate must not contain a human_handle field."
            )
        redaction_problem = _check_redacted_device(d_cert, rd_cert)
        if redaction_problem is not None:
            return redaction_problem

        user = User(
            user_id=u_cert.user_id,
            human_handle=u_cert.human_handle,
            profile=u_cert.effective_profile,
            user_certificate=user_certificate,
            redacted_user_certificate=redacted_user_certificate,
            user_certifier=client.device_id,
            created_on=u_cert.timestamp,
        )
        device = Device(
            device_id=d_cert.device_id,
            device_label=d_cert.device_label,
            device_certificate=device_certificate,
            redacted_device_certificate=redacted_device_certificate,
            device_certifier=client.device_id,
            created_on=d_cert.timestamp,
            verify_key=d_cert.verify_key,
        )
        outcome = await self.create_user(client.organization_id, user, device)
        match outcome:
            case UserCreateBadOutcome.USER_ALREADY_EXISTS:
                return error("already_exists", f"User `{user.user_id}` already exists")
            case UserCreateBadOutcome.HUMAN_HANDLE_ALREADY_TAKEN:
                assert user.human_handle is not None
                return error(
                    "already_exists",
                    f"Human handle `{format_human_handle(user.human_handle)}` already "
                    "corresponds to a non-revoked user",
                )
            # The 2.0.0 client reports any status other than `ok` as a failed creation.
            case UserCreateBadOutcome.ACTIVE_USERS_LIMIT_REACHED:
                return error(
                    "active_users_limit_reached",
                    "The organization has reached its limit of active users",
                )
            case UserCreateBadOutcome.OUTSIDER_NOT_ALLOWED:
                return error(
                    "not_allowed", "The OUTSIDER profile is not allowed in this organization"
                )
            case None:
                pass
        await self._event_bus.send(
            UserCreatedEvent(
                organization_id=client.organization_id,
                user_id=user.user_id,
                user_certificate=user_certificate,
                first_device_certificate=device_certificate,
            )
        )
        return OK

    async def api_device_create(
        self, client: AuthenticatedClientContext, req: DeviceCreateReq
    ) -> Rep:
        return await self._create_device(
            client, req.device_certificate, req.redacted_device_certificate or None, None
        )

    async def apiv1_device_create(
        self, client: AuthenticatedClientContext, req: APIV1DeviceCreateReq
    ) -> Rep:
        return await self._create_device(client, req.device_certificate, None, req.encrypted_answer)

    async def _create_device(
        self,
        client: AuthenticatedClientContext,
        device_certificate: bytes,
        redacted_device_certificate: bytes | None,
        apiv1_encrypted_answer: bytes | None,
    ) -> Rep:
        """`apiv1_encrypted_answer` is None for API 2 (relayed to an API 1 claimer)."""
        api_v1 = apiv1_encrypted_answer is not None
        key, author = client.verify_key, client.device_id
        try:
            d_cert = verify_and_load(DeviceCertificate, device_certificate, key, author)
            rd_cert = None
            if redacted_device_certificate is not None:
                rd_cert = verify_and_load(
                    DeviceCertificate, redacted_device_certificate, key, author
                )
        except CertificateError as exc:
            return _invalid_certification(str(exc))
        if not timestamps_in_the_ballpark(d_cert.timestamp, DateTime.now()):
            return error("invalid_certification", "Invalid timestamp in certification.")
        if api_v1 and d_cert.device_label is not None:
            return error(
                "invalid_data", "Redacted Device certificate must not contain a device_label field."
            )
        if user_id_of(d_cert.device_id) != client.user_id:
            return error("bad_user_id", "Device must be handled by it own user.")
        if rd_cert is not None:
            redaction_problem = _check_redacted_device(d_cert, rd_cert)
            if redaction_problem is not None:
                return redaction_problem
        device = Device(
            device_id=d_cert.device_id,
            device_label=d_cert.device_label,
            device_certificate=device_certificate,
            redacted_device_certificate=redacted_device_certificate or device_certificate,
            device_certifier=client.device_id,
            created_on=d_cert.timestamp,
            verify_key=d_cert.verify_key,
        )
        outcome = await self.create_device(client.organization_id, device)
        if outcome is DeviceCreateBadOutcome.ALREADY_EXISTS:
            return error("already_exists", f"Device `{device.device_id}` already exists")
        await self._event_bus.send(
            DeviceCreatedEvent(
                organization_id=client.organization_id,
                device_id=device.device_id,
                device_certificate=device_certificate,
                encrypted_answer=apiv1_encrypted_answer or b"",
            )
        )
        return OK

    async def api_user_revoke(self, client: AuthenticatedClientContext, req: UserRevokeReq) -> Rep:
        try:
            cert = verify_and_load(
                RevokedUserCertificate,
                req.revoked_user_certificate,
                client.verify_key,
                client.device_id,
            )
        except CertificateError as exc:
            return _invalid_certification(str(exc))
        if not timestamps_in_the_ballpark(cert.timestamp, DateTime.now()):
            return error("invalid_certification", "Invalid timestamp in certification.")
        if cert.user_id == client.user_id:
            return error("not_allowed", "Cannot do self-revocation")
        outcome = await self.revoke_user(
            client.organization_id,
            cert.user_id,
            req.revoked_user_certificate,
            client.device_id,
            cert.timestamp,
        )
        self._audit.record(
            Action.USER_REVOKE,
            Actor.of(client),
            Target(organization=client.organization_id, user=cert.user_id),
            AUDIT_OK if outcome is None else outcome.name.lower(),
        )
        match outcome:
            case UserRevokeBadOutcome.NOT_FOUND:
                return error("not_found")
            case UserRevokeBadOutcome.ALREADY_REVOKED:
                return error("already_revoked", f"User `{cert.user_id}` already revoked")
            case None:
                pass
        await self._event_bus.send(
            UserRevokedEvent(organization_id=client.organization_id, user_id=cert.user_id)
        )
        return OK

    async def api_human_find(self, client: AuthenticatedClientContext, req: HumanFindReq) -> Rep:
        candidates = await self.human_candidates(client.organization_id)
        results, total = find_humans(
            candidates,
            req.query,
            req.omit_revoked,
            req.omit_non_human,
            req.page,
            req.per_page,
            DateTime.now(),
        )
        return ok(
            results=[
                {
                    "user_id": r.user_id,
                    "human_handle": list(r.human_handle) if r.human_handle else None,
                    "revoked": r.revoked,
                }
                for r in results
            ],
            page=req.page,
            per_page=req.per_page,
            total=total,
        )

    async def apiv1_user_find(
        self, client: AuthenticatedClientContext, req: APIV1UserFindReq
    ) -> Rep:
        now = DateTime.now()
        query = (req.query or "").lower()
        matching = sorted(
            (
                c.user_id
                for c in await self.human_candidates(client.organization_id)
                if c.user_id.lower().startswith(query)
                and not (req.omit_revoked and c.revoked_on is not None and c.revoked_on <= now)
            ),
            key=str.lower,
        )
        start = (req.page - 1) * req.per_page
        return ok(
            results=matching[start : start + req.per_page],
            page=req.page,
            per_page=req.per_page,
            total=len(matching),
        )


def _check_redacted_device(full: DeviceCertificate, redacted: DeviceCertificate) -> Rep | None:
    if not is_redacted_copy_of(full, redacted, "device_label"):
        return error("invalid_data", "Redacted Device certificate differs from Device certificate.")
    if redacted.device_label is not None:
        return error(
            "invalid_data", "Redacted Device certificate must not contain a device_label field."
        )
    return None
