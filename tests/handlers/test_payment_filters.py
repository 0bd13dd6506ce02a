"""GET /users/{id}/payments filtered by status and creation time, on the real MariaDB:
filters combine with pages, a cursor holds to its filters, and every filter is an index's."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest

from domain import payments, users
from managers.mysql import MySQLManager
from managers.shards import logical_shard, new_id


def pages_path(user_id: str, **query: str) -> str:
    return f"/api/v1/users/{user_id}/payments?" + "&".join(f"{k}={v}" for k, v in query.items())


async def all_pages(api, user_id: str, **query: str) -> list[str]:
    """Every payment id the filters select, following next_cursor two at a time."""
    ids, cursor = [], None
    while True:
        code, page, _ = await api.get(pages_path(user_id, limit="2", **query, **({"cursor": cursor} if cursor else {})))
        assert code == 200, page
        ids += [p["id"] for p in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            return ids


@pytest.mark.gen_test(timeout=60)
async def test_status_and_time_filters_combine_with_pages(api):
    user = await api.new_user()
    made = [await api.new_payment(user["id"], amount=f"{n}.00") for n in range(1, 8)]
    for payment in made[::2]:  # 1, 3, 5, 7 completed
        await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
    newest_first = [p["id"] for p in reversed(made)]
    gte, lt = made[2]["created_at"], made[5]["created_at"]  # the 3rd, 4th and 5th
    assert await all_pages(api, user["id"]) == newest_first
    assert await all_pages(api, user["id"], status="completed") == newest_first[::2]
    assert await all_pages(api, user["id"], created_gte=gte) == newest_first[:5]
    assert await all_pages(api, user["id"], created_lt=lt) == newest_first[2:]
    assert await all_pages(api, user["id"], created_gte=gte, created_lt=lt) == newest_first[2:5]
    assert await all_pages(api, user["id"], status="completed", created_gte=gte, created_lt=lt) == [
        made[4]["id"],
        made[2]["id"],
    ]
    assert await all_pages(api, user["id"], status="refunded") == []
    offset = dt.datetime.fromisoformat(gte.replace("Z", "+00:00")).astimezone(dt.timezone(dt.timedelta(hours=2)))
    same = await all_pages(api, user["id"], created_gte=offset.isoformat().replace("+", "%2B"))
    assert same == newest_first[:5]  # any offset, read as UTC


@pytest.mark.gen_test
async def test_a_cursor_is_taken_with_its_own_filters_only(api):
    user = await api.new_user()
    for n in range(3):
        payment = await api.new_payment(user["id"], amount=f"{n + 1}.00")
        await api.put(f"/api/v1/payments/{payment['id']}/status", {"status": "completed"})
    since = "2020-01-01T00:00:00Z"
    code, page, _ = await api.get(pages_path(user["id"], limit="1", status="completed", created_gte=since))
    cursor = page["next_cursor"]
    assert code == 200 and cursor
    same = pages_path(user["id"], limit="5", status="completed", created_gte=since, cursor=cursor)
    assert (await api.get(same))[0] == 200  # another limit is fine
    for other in (
        {},
        {"status": "completed"},
        {"status": "pending", "created_gte": since},
        {"status": "completed", "created_gte": "2020-01-01T00:00:01Z"},
        {"status": "completed", "created_gte": since, "created_lt": "2099-01-01T00:00:00Z"},
    ):
        code, body, _ = await api.get(pages_path(user["id"], cursor=cursor, **other))
        assert (code, body["error"]["code"]) == (400, "cursor_filter_mismatch"), other


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query",
    [
        "created_gte=yesterday",
        "created_lt=2026-01-01",
        "created_gte=2026-01-01T00:00:00",  # no zone
        "created_lt=2026-13-01T00:00:00Z",
        "created_gte=",
    ],
)
async def test_bad_times_are_400_invalid_time(api, query):
    user = await api.new_user()
    code, body, _ = await api.get(f"/api/v1/users/{user['id']}/payments?{query}")
    assert (code, body["error"]["code"]) == (400, "invalid_time")


FILTERS = {
    "status": "completed",
    "created_gte": dt.datetime(2030, 1, 1, 12),
    "created_lt": dt.datetime(2030, 1, 2),
}


BIG = 2000  # a user's payments: enough that the plan is the one of a user with many


@pytest.fixture(scope="module")
def big_user(services, io_loop) -> str:
    """A user with ``BIG`` payments over ``BIG`` minutes, a quarter each of four statuses,
    written straight to the table."""
    user = io_loop.run_sync(lambda: users.create(f"{uuid.uuid4().hex}@example.com", "Big"))
    start, statuses = dt.datetime(2030, 1, 1), ("pending", "processing", "completed", "failed")
    values = [
        (
            new_id(logical_shard(user["id"])),
            user["id"],
            100 + i,
            "USD",
            statuses[i % 4],
            start + dt.timedelta(minutes=i),
        )
        for i in range(BIG)
    ]
    insert = (
        "INSERT INTO payments (id, user_id, amount_minor, currency, status, version, created_at, updated_at) VALUES "
        + ", ".join(["(%s, %s, %s, %s, %s, 1, %s, NOW(6))"] * BIG),
        [v for row in values for v in row],
    )

    async def write() -> None:
        async with MySQLManager.instance().for_id(user["id"]).transaction() as tx:
            await tx.script([insert], commit=True)

    io_loop.run_sync(write)
    return user["id"]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    "names",
    [combo for n in range(len(FILTERS) + 1) for combo in itertools.combinations(FILTERS, n)],
    ids=lambda names: "+".join(names) or "none",
)
@pytest.mark.parametrize("with_cursor", [False, True], ids=["first", "next"])
async def test_every_filter_is_served_by_an_index(big_user, names, with_cursor):
    """EXPLAIN of the very query a page runs: the page's ids from an index range (or lookup)
    of the user's rows in the page's order, read from the index alone, then their rows by
    primary key: never a scan of the table, nor a sort of more than the page."""
    where, args = ["user_id = %s"], [big_user]
    filters = payments.Filters(**{name: FILTERS[name] for name in names})
    for name, sql in (
        ("status", "status = %s"),
        ("created_gte", "created_at >= %s"),
        ("created_lt", "created_at < %s"),
    ):
        if getattr(filters, name) is not None:
            where.append(sql)
            args.append(getattr(filters, name))
    if with_cursor:
        where.append("(created_at < %s OR (created_at = %s AND id < %s))")
        args += [dt.datetime(2030, 1, 1, 18), dt.datetime(2030, 1, 1, 18), "ffffffff-ffff-4fff-bfff-ffffffffffff"]
    plan = await MySQLManager.instance().home.fetchall("EXPLAIN " + payments.page_query(where), (*args, 21))
    steps = {(step["select_type"], step["table"]): step for step in plan}
    assert set(steps) == {("PRIMARY", "<derived2>"), ("PRIMARY", "payments"), ("DERIVED", "payments")}, plan
    ids = steps[("DERIVED", "payments")]  # the page's ids: the index alone, in its order
    index = "ix_payments_user_status_created" if "status" in names else "ix_payments_user_created"
    assert ids["type"] in ("ref", "range") and ids["key"] == index, ids
    assert "Using index" in ids["Extra"] and "filesort" not in ids["Extra"], ids
    rows = steps[("PRIMARY", "payments")]  # then each of those rows by its primary key
    assert (rows["type"], rows["key"]) == ("eq_ref", "PRIMARY"), rows
    assert int(steps[("PRIMARY", "<derived2>")]["rows"]) <= 21  # the sort after: the page's rows only
