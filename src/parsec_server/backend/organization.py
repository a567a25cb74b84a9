"""Organizations: creation by the administrator, bootstrap, status, stats, expiration."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, auto

import msgspec
from msgspec import UNSET, UnsetType

from parsec_server.api.certificates import (
    CertificateError,
    DeviceCertificate,
    UserCertificate,
    is_redacted_copy_of,
    verify_and_load,
)
from parsec_server.api.codec import DateTime
from parsec_server.api.crypto import new_bootstrap_token, secrets_equal
from parsec_server.api.ids import UserProfile
from parsec_server.api.protocol.base import OK, Rep, error, ok
from parsec_server.api.protocol.organization import (
    OrganizationBootstrapReq,
    OrganizationCreateReq,
    OrganizationStatsReq,
    OrganizationStatusReq,
    OrganizationUpdateReq,
)
from parsec_server.backend.audit import OK as AUDIT_OK
from parsec_server.backend.audit import STREAM_ONLY, Action, Actor, AuditLog, Target
from parsec_server.backend.ballpark import timestamps_in_the_ballpark
from parsec_server.backend.client_context import (
    AdministrationClientContext,
    AnonymousClientContext,
)
from parsec_server.backend.events import EventBus, OrganizationExpiredEvent
from parsec_server.backend.user_types import Device, User
from parsec_server.backend.webhooks import BootstrapWebhook


@dataclass(frozen=True, slots=True)
class Organization:
    organization_id: str
    bootstrap_token: str
    expiration_date: DateTime | None
    root_verify_key: bytes | None

    @property
    def is_bootstrapped(self) -> bool:
        return self.root_verify_key is not None

    def is_expired(self, now: DateTime) -> bool:
        return self.expiration_date is not None and self.expiration_date <= now


@dataclass(frozen=True, slots=True)
class OrganizationSettings:
    """What the administration sets besides the expiration date (stored by our server
    only: `ext_organization_settings` on PostgreSQL)."""

    # None: no limit. Revoked and frozen users do not count.
    active_users_limit: int | None = None
    user_profile_outsider_allowed: bool = True


DEFAULT_SETTINGS = OrganizationSettings()


@dataclass(frozen=True, slots=True)
class OrganizationDetails:
    """An organization as the administration sees it."""

    organization: Organization
    settings: OrganizationSettings
    # None: created by Parsec 2.0.0 before our server took the database over.
    created_on: DateTime | None


@dataclass(frozen=True, slots=True)
class ProfileCount:
    active: int
    revoked: int


@dataclass(frozen=True, slots=True)
class OrganizationStats:
    users: int  # revoked ones included (what `organization_stats` has always reported)
    data_size: int
    metadata_size: int
    active_users: int = 0  # not revoked (frozen ones included)
    realms: int = 0
    users_per_profile: Mapping[UserProfile, ProfileCount] = field(default_factory=dict)


def count_users(
    users: Iterable[tuple[UserProfile, bool]],
) -> tuple[int, int, dict[UserProfile, ProfileCount]]:
    """(users, active users, per profile) of `(profile, revoked)` pairs."""
    counts = {profile: [0, 0] for profile in UserProfile}
    for profile, revoked in users:
        counts[profile][1 if revoked else 0] += 1
    per_profile = {p: ProfileCount(active=a, revoked=r) for p, (a, r) in counts.items()}
    active = sum(c.active for c in per_profile.values())
    return active + sum(c.revoked for c in per_profile.values()), active, per_profile


@dataclass(frozen=True, slots=True)
class OrganizationUpdate:
    """The changes of an administrator's update; UNSET: left as it is. `is_expired` is a
    shorthand: True sets the expiration date to now (unless already expired), False
    removes a past expiration date. Not given together with `expiration_date`."""

    expiration_date: DateTime | UnsetType | None = UNSET
    is_expired: bool | UnsetType = UNSET
    active_users_limit: int | UnsetType | None = UNSET
    user_profile_outsider_allowed: bool | UnsetType = UNSET


class OrganizationCreateBadOutcome(Enum):
    ALREADY_EXISTS = auto()  # only when not replacing a not bootstrapped organization
    ALREADY_BOOTSTRAPPED = auto()


class OrganizationBootstrapBadOutcome(Enum):
    NOT_FOUND = auto()
    BAD_TOKEN = auto()
    ALREADY_BOOTSTRAPPED = auto()


def _invalid_certification(detail: str) -> Rep:
    return error("invalid_certification", f"Invalid certification data ({detail}).")


class BaseOrganizationComponent(ABC):
    def __init__(
        self, event_bus: EventBus, webhook: BootstrapWebhook, audit: AuditLog = STREAM_ONLY
    ) -> None:
        self._event_bus = event_bus
        self._webhook = webhook
        self._audit = audit

    # Storage

    @abstractmethod
    async def create(
        self,
        organization_id: str,
        bootstrap_token: str,
        expiration_date: DateTime | None,
        settings: OrganizationSettings,
        created_on: DateTime,
        replace_unbootstrapped: bool,
    ) -> OrganizationCreateBadOutcome | None:
        """Create; an existing organization not yet bootstrapped is overwritten (new token,
        expiration, settings) when `replace_unbootstrapped`, else `ALREADY_EXISTS`."""

    @abstractmethod
    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        """Spontaneous bootstrap: create with no expiration unless it already exists."""

    @abstractmethod
    async def get(self, organization_id: str) -> Organization | None: ...

    @abstractmethod
    async def get_details(self, organization_id: str) -> OrganizationDetails | None: ...

    @abstractmethod
    async def list_details(self, offset: int, limit: int) -> tuple[list[OrganizationDetails], int]:
        """A page of organizations in id order, and how many there are."""

    @abstractmethod
    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        first_user: User,
        first_device: Device,
    ) -> OrganizationBootstrapBadOutcome | None:
        """Atomically check the token, set the root key, create the first user and device."""

    @abstractmethod
    async def stats(self, organization_id: str, at: DateTime | None) -> OrganizationStats | None:
        """As of `at` (None: everything stored, whatever its date)."""

    @abstractmethod
    async def all_stats(self, at: DateTime | None) -> list[tuple[str, OrganizationStats]]:
        """The stats of every organization existing at `at` (those of unknown creation
        date included), in id order."""

    @abstractmethod
    async def update(
        self,
        organization_id: str,
        expiration_date: DateTime | UnsetType | None,
        active_users_limit: int | UnsetType | None,
        user_profile_outsider_allowed: bool | UnsetType,
    ) -> bool:
        """Change what is not UNSET; False when the organization does not exist."""

    # Administration (shared by the websocket commands and the REST API)

    async def create_organization(
        self,
        actor: Actor,
        organization_id: str,
        expiration_date: DateTime | None,
        settings: OrganizationSettings = DEFAULT_SETTINGS,
        *,
        replace_unbootstrapped: bool,
    ) -> str | OrganizationCreateBadOutcome:
        """The new organization's bootstrap token. The websocket command replaces an
        organization not yet bootstrapped (Parsec 2.0.0), the REST API does not."""
        token = new_bootstrap_token()
        outcome = await self.create(
            organization_id,
            token,
            expiration_date,
            settings,
            DateTime.now(),
            replace_unbootstrapped,
        )
        self._audit.record(
            Action.ORGANIZATION_CREATE,
            actor,
            Target(organization=organization_id),
            AUDIT_OK if outcome is None else outcome.name.lower(),
            expiration_date=expiration_date,
            active_users_limit=settings.active_users_limit,
            user_profile_outsider_allowed=settings.user_profile_outsider_allowed,
        )
        return token if outcome is None else outcome

    async def update_organization(
        self, actor: Actor, organization_id: str, update: OrganizationUpdate
    ) -> OrganizationDetails | None:
        """The organization once updated; None if it does not exist. Audited as
        `organization.expire` when its expiration date becomes reached, else
        `organization.update`."""
        expiration_date = update.expiration_date
        found = True
        if not isinstance(update.is_expired, UnsetType):
            current = await self.get_details(organization_id)
            found = current is not None
            if current is not None:
                expiration_date = _expiration_for(
                    current.organization.expiration_date, update.is_expired, DateTime.now()
                )
        if found:
            found = await self.update(
                organization_id,
                expiration_date,
                update.active_users_limit,
                update.user_profile_outsider_allowed,
            )
        expires = isinstance(expiration_date, DateTime) and expiration_date <= DateTime.now()
        given = {
            "expiration_date": update.expiration_date,
            "is_expired": update.is_expired,
            "active_users_limit": update.active_users_limit,
            "user_profile_outsider_allowed": update.user_profile_outsider_allowed,
        }
        self._audit.record(
            Action.ORGANIZATION_EXPIRE if expires else Action.ORGANIZATION_UPDATE,
            actor,
            Target(organization=organization_id),
            AUDIT_OK if found else "not_found",
            None,
            **{key: value for key, value in given.items() if not isinstance(value, UnsetType)},
        )
        if not found:
            return None
        if not isinstance(expiration_date, UnsetType):
            await self._announce_expiration(organization_id, expiration_date)
        return await self.get_details(organization_id)

    async def _announce_expiration(
        self, organization_id: str, expiration_date: DateTime | None
    ) -> None:
        """An expiration date already reached closes the organization's connections."""
        if expiration_date is not None and expiration_date <= DateTime.now():
            await self._event_bus.send(OrganizationExpiredEvent(organization_id=organization_id))

    # Commands

    async def api_organization_create(
        self, client: AdministrationClientContext, req: OrganizationCreateReq
    ) -> Rep:
        token = await self.create_organization(
            Actor.of(client),
            req.organization_id,
            req.expiration_date,
            replace_unbootstrapped=True,
        )
        if isinstance(token, OrganizationCreateBadOutcome):
            return error("already_exists")
        if req.expiration_date is None:
            return ok(bootstrap_token=token)
        return ok(bootstrap_token=token, expiration_date=req.expiration_date)

    async def api_organization_status(
        self, client: AdministrationClientContext, req: OrganizationStatusReq
    ) -> Rep:
        organization = await self.get(req.organization_id)
        if organization is None:
            return error("not_found")
        return ok(
            is_bootstrapped=organization.is_bootstrapped,
            expiration_date=organization.expiration_date,
        )

    async def api_organization_stats(
        self, client: AdministrationClientContext, req: OrganizationStatsReq
    ) -> Rep:
        stats = await self.stats(req.organization_id, None)
        self._audit.record(
            Action.ORGANIZATION_STATS_EXPORT,
            Actor.of(client),
            Target(organization=req.organization_id),
            "not_found" if stats is None else AUDIT_OK,
        )
        if stats is None:
            return error("not_found")
        return ok(users=stats.users, data_size=stats.data_size, metadata_size=stats.metadata_size)

    async def api_organization_update(
        self, client: AdministrationClientContext, req: OrganizationUpdateReq
    ) -> Rep:
        update = OrganizationUpdate(expiration_date=req.expiration_date)
        if await self.update_organization(Actor.of(client), req.organization_id, update) is None:
            return error("not_found")
        return OK

    async def api_organization_bootstrap(
        self, client: AnonymousClientContext, req: OrganizationBootstrapReq
    ) -> Rep:
        checked = check_bootstrap_certificates(req)
        if not isinstance(checked, tuple):
            return checked
        user, device = checked
        outcome = await self.bootstrap(
            client.organization_id, req.bootstrap_token, req.root_verify_key, user, device
        )
        match outcome:
            case OrganizationBootstrapBadOutcome.ALREADY_BOOTSTRAPPED:
                return error("already_bootstrapped")
            case OrganizationBootstrapBadOutcome.NOT_FOUND:
                return error("not_found")
            case OrganizationBootstrapBadOutcome.BAD_TOKEN:
                return error("not_found")
            case None:
                pass
        await self._webhook.notify_bootstrap(client.organization_id, user, device)
        return OK


def _expiration_for(
    current: DateTime | None, expired: bool, now: DateTime
) -> DateTime | UnsetType | None:
    """The expiration date that `is_expired` asks for (UNSET: nothing to change)."""
    is_expired = current is not None and current <= now
    if expired == is_expired:
        return UNSET
    return now if expired else None


def bootstrap_token_matches(organization: Organization, token: str) -> bool:
    return secrets_equal(organization.bootstrap_token, token)


def check_bootstrap_certificates(req: OrganizationBootstrapReq) -> Rep | tuple[User, Device]:
    """Every check of organization_bootstrap that needs no storage, in the spec's order."""
    rvk = req.root_verify_key
    try:
        u_cert = verify_and_load(UserCertificate, req.user_certificate, rvk, None)
        d_cert = verify_and_load(DeviceCertificate, req.device_certificate, rvk, None)
        ru_cert = d_ru = None
        if req.redacted_user_certificate is not msgspec.UNSET:
            ru_cert = verify_and_load(UserCertificate, req.redacted_user_certificate, rvk, None)
        if req.redacted_device_certificate is not msgspec.UNSET:
            d_ru = verify_and_load(DeviceCertificate, req.redacted_device_certificate, rvk, None)
    except CertificateError as exc:
        return _invalid_certification(str(exc))

    if u_cert.effective_profile is not UserProfile.ADMIN:
        return error("invalid_data", "Bootstrapping user must have admin profile.")
    if u_cert.timestamp != d_cert.timestamp:
        return error("invalid_data", "Device and user certificates must have the same timestamp.")
    if d_cert.device_id.partition("@")[0] != u_cert.user_id:
        return error("invalid_data", "Device and user must have the same user ID.")
    if not timestamps_in_the_ballpark(u_cert.timestamp, DateTime.now()):
        return error("invalid_certification", "Invalid timestamp in certification.")
    if ru_cert is not None:
        if not is_redacted_copy_of(u_cert, ru_cert, "human_handle"):
            return error("invalid_data", "Redacted User certificate differs from User certificate.")
        if ru_cert.human_handle is not None:
            return error(
                "invalid_data", "Redacted User certificate must not contain a human_handle field."
            )
    if d_ru is not None:
        if not is_redacted_copy_of(d_cert, d_ru, "device_label"):
            return error(
                "invalid_data", "Redacted Device certificate differs from Device certificate."
            )
        if d_ru.device_label is not None:
            return error(
                "invalid_data", "Redacted Device certificate must not contain a device_label field."
            )
    if (ru_cert is None) != (d_ru is None):
        return error("invalid_data", "Redacted user&device certificate muste be provided together")

    redacted_user = req.user_certificate
    if not isinstance(req.redacted_user_certificate, msgspec.UnsetType):
        redacted_user = req.redacted_user_certificate
    redacted_device = req.device_certificate
    if not isinstance(req.redacted_device_certificate, msgspec.UnsetType):
        redacted_device = req.redacted_device_certificate
    user = User(
        user_id=u_cert.user_id,
        human_handle=u_cert.human_handle,
        profile=UserProfile.ADMIN,
        user_certificate=req.user_certificate,
        redacted_user_certificate=redacted_user,
        user_certifier=None,
        created_on=u_cert.timestamp,
    )
    device = Device(
        device_id=d_cert.device_id,
        device_label=d_cert.device_label,
        device_certificate=req.device_certificate,
        redacted_device_certificate=redacted_device,
        device_certifier=None,
        created_on=d_cert.timestamp,
        verify_key=d_cert.verify_key,
    )
    return user, device
