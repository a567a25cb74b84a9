from tests.fixtures.servers import Organization


async def test_bootstrapped_admin_can_ping(org: Organization) -> None:
    async with await org.alice.connect() as conn:
        assert await conn.cmd("ping", ping="hi") == {"status": "ok", "pong": "hi"}
