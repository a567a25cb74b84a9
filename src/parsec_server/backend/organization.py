"""Organizations: creation by the administrator, bootstrap, status, stats, expiration."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum, auto

import msgspec

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
class OrganizationStats:
    users: int
    data_size: int
    metadata_size: int


class OrganizationCreateBadOutcome(Enum):
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
        self, organization_id: str, bootstrap_token: str, expiration_date: DateTime | None
    ) -> OrganizationCreateBadOutcome | None:
        """Create, or overwrite a not yet bootstrapped one (new token, new expiration)."""

    @abstractmethod
    async def create_if_missing(self, organization_id: str, bootstrap_token: str) -> None:
        """Spontaneous bootstrap: create with no expiration unless it already exists."""

    @abstractmethod
    async def get(self, organization_id: str) -> Organization | None: ...

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
    async def stats(self, organization_id: str) -> OrganizationStats | None: ...

    @abstractmethod
    async def update_expiration_date(
        self, organization_id: str, expiration_date: DateTime | None
    ) -> bool:
        """False when the organization does not exist."""

    # Commands

    async def api_organization_create(
        self, client: AdministrationClientContext, req: OrganizationCreateReq
    ) -> Rep:
        token = new_bootstrap_token()
        outcome = await self.create(req.organization_id, token, req.expiration_date)
        self._audit.record(
            Action.ORGANIZATION_CREATE,
            Actor.of(client),
            Target(organization=req.organization_id),
            "already_exists" if outcome is not None else AUDIT_OK,
            expiration_date=req.expiration_date,
        )
        if outcome is OrganizationCreateBadOutcome.ALREADY_BOOTSTRAPPED:
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
        stats = await self.stats(req.organization_id)
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
        found = await self.update_expiration_date(req.organization_id, req.expiration_date)
        expires = req.expiration_date is not None and req.expiration_date <= DateTime.now()
        self._audit.record(
            Action.ORGANIZATION_EXPIRE if expires else Action.ORGANIZATION_UPDATE,
            Actor.of(client),
            Target(organization=req.organization_id),
            AUDIT_OK if found else "not_found",
            expiration_date=req.expiration_date,
        )
        if not found:
            return error("not_found")
        if expires:
            await self._event_bus.send(
                OrganizationExpiredEvent(organization_id=req.organization_id)
            )
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
